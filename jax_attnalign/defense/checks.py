"""Checks of config fields at construction: each raises a ValueError naming the field
(`Class.field`) and what it allows. The generic ones live in `jax_attnalign.validation`."""

from __future__ import annotations

from jax_attnalign.analysis.views import VIEWS
from jax_attnalign.validation import at_least, choice, finite, in_range, rate

__all__ = ["at_least", "choice", "finite", "in_range", "rate", "view"]


def view(field: str, value: str) -> None:
  if value not in VIEWS:
    raise ValueError(f"{field} must be a named view, one of {tuple(sorted(VIEWS))}, "
                     f"got {value!r}.")
