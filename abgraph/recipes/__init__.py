"""Recipes: the base class, probe functions and the built-in recipes."""
from .base import Probe, Recipe, function
from .evaluate import Evaluate
from .prune import MakePermanent, Prune
from .reinit import Reinit, Rewind
from .train import Train

__all__ = ["Evaluate", "MakePermanent", "Probe", "Prune", "Recipe", "Reinit", "Rewind", "Train", "function"]
