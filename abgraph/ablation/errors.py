"""Errors raised while planning an ablation."""
from __future__ import annotations


class AblationError(ValueError):
    """An ablation that cannot be applied or repaired.

    A ValueError because the cause is always a bad target or input, and raised at
    plan time so that a study fails before anything trains.
    """
