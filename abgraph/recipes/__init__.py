"""Recipes: the base class, probe functions and the built-in recipes."""
from .base import Probe, Recipe, function

__all__ = ["Probe", "Recipe", "function"]
