"""Recipes: the base class, probe functions and the built-in recipes."""
from .base import Function, Probe, Recipe, function
from .evaluate import Evaluate
from .prune import MakePermanent, Prune
from .reinit import Reinit, Rewind
from .train import Train

__all__ = ["Evaluate", "Function", "MakePermanent", "Probe", "Prune", "Recipe", "Reinit", "Rewind", "Train", "function"]
