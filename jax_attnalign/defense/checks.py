"""Checks of config fields at construction: each raises a ValueError naming the field
(`Class.field`) and what it allows."""

from __future__ import annotations

import math

from jax_attnalign.analysis.views import VIEWS


def choice(field: str, value, allowed: tuple) -> None:
  if value not in allowed:
    raise ValueError(f"{field} must be one of {allowed}, got {value!r}.")


def view(field: str, value: str) -> None:
  if value not in VIEWS:
    raise ValueError(f"{field} must be a named view, one of {tuple(sorted(VIEWS))}, "
                     f"got {value!r}.")


def at_least(field: str, value, low: int) -> None:
  """An integer (not a bool) >= low."""
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{field} must be an integer >= {low}, got {value!r}.")


def finite(field: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f"{field} must be a finite number, got {value!r}.")


def rate(field: str, value) -> None:
  """A learning rate: finite and >= 0 (0 freezes)."""
  finite(field, value)
  if value < 0:
    raise ValueError(f"{field} must be a finite number >= 0, got {value!r}.")


def in_range(field: str, value, low: float, high: float, *, open_: bool = False) -> None:
  """low <= value <= high, or low < value < high with `open_`."""
  finite(field, value)
  inside = low < value < high if open_ else low <= value <= high
  if not inside:
    interval = f"({low}, {high})" if open_ else f"[{low}, {high}]"
    raise ValueError(f"{field} must lie in {interval}, got {value!r}.")
