"""Layer removal and shape repair (abgraph.ablation.surgery)."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

from abgraph.ablation.errors import AblationError
from abgraph.ablation.surgery import Prefix, ablate_layers, list_layers, repair_input_layer

# Maggy thesis, Listing 4.2 (the PDF's line numbers removed): the Listing 4.1 model
# after removing layers [2, 3], then after removing layers [4, 5].
LISTING_4_2_FIRST = """\
Sequential(
  (0): Linear(in_features=6, out_features=64, bias=True)
  (1): ReLU()
  (2): Linear(in_features=64, out_features=32, bias=True)
  (3): ReLU()
  (4): Linear(in_features=32, out_features=2, bias=True)
  (5): ReLU()
  (6): Linear(in_features=2, out_features=1, bias=True)
  (7): Sigmoid()
)"""
LISTING_4_2_SECOND = """\
Sequential(
  (0): Linear(in_features=6, out_features=64, bias=True)
  (1): ReLU()
  (2): Linear(in_features=64, out_features=64, bias=True)
  (3): ReLU()
  (4): Linear(in_features=64, out_features=2, bias=True)
  (5): ReLU()
  (6): Linear(in_features=2, out_features=1, bias=True)
  (7): Sigmoid()
)"""


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def titanic_model():
    """Listing 3.9 / 4.1."""
    return nn.Sequential(
        nn.Linear(6, 64), nn.ReLU(),
        nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, 32), nn.ReLU(),
        nn.Linear(32, 2), nn.ReLU(),
        nn.Linear(2, 1), nn.Sigmoid(),
    )


def named_model():
    return nn.Sequential(OrderedDict([
        ("my_dense1", nn.Linear(6, 16)), ("act1", nn.ReLU()),
        ("my_dense2", nn.Linear(16, 8)), ("act2", nn.Tanh()),
        ("drop", nn.Dropout(0.1)),
        ("head", nn.Linear(8, 1)),
    ]))


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=5, stride=2, padding=2, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.expand = nn.Linear(16, 24)
        self.norm = nn.LayerNorm(24)

    def forward(self, x):
        return self.norm(self.expand(torch.relu(self.proj(x))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.block = Block()
        self.head = nn.Linear(24, 1)

    def forward(self, x):
        return self.head(self.block(self.encoder(x)))


class FixedHead(nn.Module):
    """A layer type the surgery cannot rebuild."""

    def __init__(self, width):
        super().__init__()
        self.w = nn.Parameter(torch.ones(width, 1))

    def forward(self, x):
        return x @ self.w


# --- the thesis case -----------------------------------------------------------

def test_thesis_listing_remove_2_3_leaves_other_layers_as_they_were():
    assert str(ablate_layers(titanic_model(), [2, 3])) == LISTING_4_2_FIRST


def test_thesis_listing_remove_4_5_rebuilds_next_linear_without_example_input():
    model = ablate_layers(titanic_model(), [4, 5])
    assert str(model) == LISTING_4_2_SECOND
    assert model(torch.randn(4, 6)).shape == (4, 1)


def test_thesis_listing_remove_4_5_with_example_input_gives_same_model():
    model = ablate_layers(titanic_model(), [4, 5], example_input=torch.randn(4, 6))
    assert str(model) == LISTING_4_2_SECOND


def test_with_activation_removes_the_following_activation():
    assert str(ablate_layers(titanic_model(), 2, with_activation=True)) == LISTING_4_2_FIRST
    assert str(ablate_layers(titanic_model(), 4, with_activation=True)) == LISTING_4_2_SECOND
    only_layer = ablate_layers(titanic_model(), 2)
    assert len(only_layer) == 9 and isinstance(only_layer[2], nn.ReLU)


def test_removing_the_first_layer_rebuilds_the_next_for_the_model_input():
    model = ablate_layers(titanic_model(), 0, with_activation=True)
    assert model[0].in_features == 6 and model[0].out_features == 64
    assert model(torch.randn(3, 6)).shape == (3, 1)


def test_rebuilt_layer_gets_fresh_parameters_and_others_keep_theirs():
    base = titanic_model()
    model = ablate_layers(base, [4, 5])
    assert torch.equal(model[0].weight, base[0].weight)
    assert model[0].weight is not base[0].weight
    assert model[4].weight.shape == (2, 64)


def test_original_model_is_untouched():
    base = titanic_model().eval()
    before_str = str(base)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = ablate_layers(base, [4, 5], example_input=torch.randn(4, 6))
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert str(base) == before_str
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert not base.training and not model.training


# --- naming targets ---------------------------------------------------------------

def test_ordered_dict_names_are_kept():
    model = ablate_layers(named_model(), "my_dense2", with_activation=True)
    assert list(model._modules) == ["my_dense1", "act1", "drop", "head"]
    assert model.head.in_features == 16
    assert model(torch.randn(2, 6)).shape == (2, 1)


def test_with_activation_does_not_take_a_following_dropout():
    model = ablate_layers(named_model(), ["my_dense2", "act2"], with_activation=True)
    assert list(model._modules) == ["my_dense1", "act1", "drop", "head"]


def test_index_works_on_named_sequential():
    assert list(ablate_layers(named_model(), [2, 3])._modules) == ["my_dense1", "act1", "drop", "head"]


def test_group_removal():
    model = ablate_layers(titanic_model(), [2, 3, 4, 5])
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "Sigmoid"]
    assert model[2].in_features == 64 and model[2].out_features == 2


def test_prefix_keyword_and_object_are_the_same():
    by_keyword = ablate_layers(named_model(), prefix="my_dense")
    by_object = ablate_layers(named_model(), Prefix("my_dense"))
    assert str(by_keyword) == str(by_object)
    assert list(by_keyword._modules) == ["act1", "act2", "drop", "head"]
    assert by_keyword.head.in_features == 6
    assert by_keyword(torch.randn(2, 6)).shape == (2, 1)


def test_list_layers_names_usable_targets():
    assert list_layers(titanic_model()) == [str(i) for i in range(10)]
    names = list_layers(Net())
    assert {"encoder", "encoder.0", "block", "block.proj", "head"} <= set(names)
    for name in names[1:]:
        if name != "head":
            ablate_layers(Net(), name, example_input=torch.randn(2, 6))


# --- any nn.Module ---------------------------------------------------------------

def test_nested_module_is_replaced_by_identity():
    base = Net()
    model = ablate_layers(base, "block.proj")
    assert isinstance(model.block.proj, nn.Identity)
    assert isinstance(base.block.proj, nn.Linear)
    assert model(torch.randn(2, 6)).shape == (2, 1)


def test_nested_width_change_is_repaired_by_dry_run():
    model = ablate_layers(Net(), "block.expand", example_input=torch.randn(2, 6))
    assert isinstance(model.block.expand, nn.Identity)
    assert model.block.norm.normalized_shape == (16,)
    assert model.head.in_features == 16
    assert model(torch.randn(5, 6)).shape == (5, 1)


def test_nested_width_change_without_example_input_is_refused():
    with pytest.raises(AblationError, match=r"'block.expand'.*16 to 24.*example_input"):
        ablate_layers(Net(), "block.expand")


def test_dotted_name_into_nested_sequential_deletes():
    with pytest.raises(AblationError, match=r"output width of 'encoder' from 16 to 32.*example_input"):
        ablate_layers(Net(), "encoder.2", with_activation=True)
    model = ablate_layers(Net(), "encoder.2", example_input=torch.randn(2, 6))
    assert len(model.encoder) == 3
    assert model.block.proj.in_features == 32
    assert model(torch.randn(2, 6)).shape == (2, 1)


# --- convolutions and normalization ---------------------------------------------------

def test_conv_channels_are_repaired_keeping_hyper_parameters():
    x = torch.randn(2, 3, 16, 16)
    model = ablate_layers(cnn(), 2, with_activation=True, example_input=x)
    conv = model[2]
    assert isinstance(conv, nn.Conv2d)
    assert (conv.in_channels, conv.out_channels) == (8, 32)
    assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == ((5, 5), (2, 2), (2, 2), None)
    assert model(x).shape == (2, 10)


def test_thesis_figure_flattened_linear_is_repaired():
    """Figure 3.2.2: without the second conv, the Linear after Flatten needs 5*26*26 inputs."""
    model = nn.Sequential(nn.Conv2d(1, 5, 3), nn.Conv2d(5, 10, 3), nn.Flatten(), nn.Linear(5760, 10))
    x = torch.randn(2, 1, 28, 28)
    ablated = ablate_layers(model, 1, example_input=x)
    assert ablated[2].in_features == 5 * 26 * 26
    assert ablated(x).shape == (2, 10)


@pytest.mark.parametrize("example", [None, torch.randn(4, 6)])
def test_batchnorm_is_rebuilt_keeping_its_settings(example):
    base = nn.Sequential(
        nn.Linear(6, 64), nn.BatchNorm1d(64), nn.ReLU(),
        nn.Linear(64, 32), nn.BatchNorm1d(32, eps=1e-3, momentum=0.2, affine=False), nn.ReLU(),
        nn.Linear(32, 1),
    )
    model = ablate_layers(base, 3, example_input=example)
    norm = model[3]
    assert isinstance(norm, nn.BatchNorm1d) and norm.num_features == 64
    assert (norm.eps, norm.momentum, norm.affine) == (1e-3, 0.2, False)
    assert model[5].in_features == 64
    assert model(torch.randn(4, 6)).shape == (4, 1)


def test_batchnorm2d_after_conv_is_rebuilt():
    base = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4),
                         nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 12, 12)
    model = ablate_layers(base, 1, example_input=x)
    assert model[1].num_features == 8 and model[3].in_channels == 8
    assert model(x).shape == (2, 2, 10, 10)


def test_eval_mode_is_kept_on_rebuilt_layers():
    model = ablate_layers(titanic_model().eval(), [4, 5], example_input=torch.randn(4, 6))
    assert not any(m.training for m in model.modules())


# --- errors ---------------------------------------------------------------------

def test_unknown_name_lists_nearest_then_all_valid_names():
    with pytest.raises(AblationError) as info:
        ablate_layers(named_model(), "my_dense3")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "'my_dense3'" in message
    assert message.index("my_dense1") < message.index("valid names")
    assert str(list_layers(named_model())) in message


def test_unknown_prefix_and_bad_targets():
    with pytest.raises(AblationError, match="starts with 'conv'"):
        ablate_layers(named_model(), prefix="conv")
    with pytest.raises(AblationError, match="out of range"):
        ablate_layers(titanic_model(), 10)
    with pytest.raises(AblationError, match="nn.Sequential"):
        ablate_layers(Net(), 0)
    with pytest.raises(AblationError, match="nothing to ablate"):
        ablate_layers(titanic_model(), [])
    with pytest.raises(AblationError, match="cannot ablate 2.5"):
        ablate_layers(titanic_model(), 2.5)


def test_unrepairable_removal_names_layer_and_shapes():
    base = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), FixedHead(8))
    with pytest.raises(AblationError) as info:
        ablate_layers(base, 2, example_input=torch.randn(4, 6))
    message = str(info.value)
    assert "'3'" in message and "FixedHead" in message and "(4, 16)" in message


def test_removing_the_output_layer_is_refused():
    with pytest.raises(AblationError, match=r"output width from 1 to 2"):
        ablate_layers(titanic_model(), 8)
    with pytest.raises(AblationError, match=r"output shape from \(4, 1\) to \(4, 2\)"):
        ablate_layers(titanic_model(), 8, example_input=torch.randn(4, 6))


def test_example_input_that_does_not_fit_the_original_model():
    with pytest.raises(AblationError, match=r"\(4, 5\).*original model.*'0'"):
        ablate_layers(titanic_model(), 2, example_input=torch.randn(4, 5))


# --- input layer repair (feature ablation) -------------------------------------------

def test_repair_input_layer_linear():
    base = titanic_model()
    for new_input in (torch.randn(4, 5), 5):
        model = repair_input_layer(base, new_input)
        assert model[0].in_features == 5 and model[0].out_features == 64
        assert torch.equal(model[2].weight, base[2].weight)
        assert model(torch.randn(4, 5)).shape == (4, 1)
    assert base[0].in_features == 6


def test_repair_input_layer_rebuilds_input_batchnorm_too():
    base = nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    for new_input in (torch.randn(4, 4), 4):
        model = repair_input_layer(base, new_input)
        assert model[0].num_features == 4 and model[1].in_features == 4
        assert model[3].in_features == 8


def test_repair_input_layer_conv2d():
    x = torch.randn(2, 2, 16, 16)   # one of three channels ablated
    model = repair_input_layer(cnn(), x)
    assert model[0].in_channels == 2 and model[0].out_channels == 8
    assert model[0].padding == (1, 1)
    assert model(x).shape == (2, 10)


def test_repair_input_layer_does_not_touch_later_layers():
    model = nn.Sequential(nn.Conv2d(1, 5, 3), nn.Flatten(), nn.Linear(5 * 26 * 26, 10))
    with pytest.raises(AblationError, match=r"'2'.*\(2, 1620\).*only the input layer"):
        repair_input_layer(model, torch.randn(2, 1, 20, 20))


def test_grouped_conv_keeps_the_grouping_the_new_size_allows():
    base = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1, groups=6))
    x = torch.randn(1, 3, 8, 8)
    model = ablate_layers(base, 0, example_input=x)
    assert (model[0].in_channels, model[0].out_channels, model[0].groups) == (3, 6, 3)
    assert model(x).shape == (1, 6, 8, 8)
