"""Ablation studies: layer and feature ablation with shape repair, Maggy's
`AblationStudy` compiled into one experiment graph, ablators, and results with
uncertainty."""
from abgraph.ablation.ablators import Ablator, LeaveKOut, LOCO, Trial
from abgraph.ablation.datasets import ChannelDataset, FeatureDataset, PandasDataset, TokenDataset
from abgraph.ablation.errors import AblationError
from abgraph.ablation.recipes import AblateFeature, AblateLayer
from abgraph.ablation.result import StudyResult
from abgraph.ablation.study import AblationStudy
from abgraph.ablation.surgery import Prefix, ablate_layers, list_layers, repair_input_layer

__all__ = ["AblateFeature", "AblateLayer", "AblationError", "AblationStudy", "Ablator", "ChannelDataset",
           "FeatureDataset", "LOCO", "LeaveKOut", "PandasDataset", "Prefix", "StudyResult", "TokenDataset",
           "Trial", "ablate_layers", "list_layers", "repair_input_layer"]
