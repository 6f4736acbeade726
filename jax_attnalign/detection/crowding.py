"""Head-output crowding: a backdoor maps its triggered inputs onto one behaviour,
so in a monitored stream their heads' outputs are near-duplicates of many
others', while clean inputs' are as varied as the inputs. The classifier's
analogue of answer collapse (`collapse`), read off the heads instead of answers.

  detector = make_detector("crowding").fit(victim, clean_rows)
  calibration = calibrate(detector, victim, more_clean_rows, fpr=0.05)
  flags = calibration.flag(detector.score(victim, stream))  # a monitored stream

Features: each layer's pairwise cosines of the heads' outputs at [CLS] (a chat
decoder's last prompt token; `heads.OutputProfile`'s vector, the H of eq. 4), each
dimension standardised by clean rows and the layer's vector scaled to unit
length. Per layer, an input's share is the fraction of the scored set's other
inputs whose vector has cosine similarity with its own at least the layer's
radius: the `quantile` of those similarities among pairs of clean rows (0.99,
set a priori: one clean pair in a hundred counts as near). A clean input's
share stays near 1 - quantile whatever the set's size; a triggered one's grows
with the number of triggered inputs in the set. Each layer's share is z-scored
by its mean and std on held-out clean rows scored as a set (std floored at one
neighbour's share), and the score is the maximum over layers.

`fit` uses half of the clean rows (drawn with `seed`) for the standardisation
and radii and scores the other half as a set for the z-scores; labels are not
read. Like answer collapse an input's score depends on the inputs scored with
it (`set_level`): a stream with one triggered input gives it nothing to match,
and the fewer triggered inputs a stream holds the less they stand out (frozen
and measured in docs/lab_notebook.md). Needs: clean rows, no labels, no
trigger, no extra model. Scoring n inputs compares every pair, one layer at a
time ([n, n] floats).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Sequence

import numpy as np

from jax_attnalign import validation
from jax_attnalign.data.types import TextExample
from jax_attnalign.detection._profile import holdout_split, require_fitted
from jax_attnalign.detection.base import Victim, register
from jax_attnalign.detection.heads import OutputProfile
from jax_attnalign.errors import InputError


def unit_rows(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """[n, L, K] standardised by `mean`, `std` ([L, K]), each [K] vector at unit length."""
  z = (features - mean) / std
  return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def near_shares(units: np.ndarray, radius: np.ndarray) -> np.ndarray:
  """[n, L]: per layer, the share of the other n - 1 rows of `units` [n, L, K]
  whose cosine similarity with the row is at least `radius` [L]."""
  n = units.shape[0]
  if n < 2:
    raise InputError("crowding scores a set of inputs against each other: give at least 2.")
  shares = np.empty((n, units.shape[1]))
  for layer, (u, r) in enumerate(zip(units.transpose(1, 0, 2), radius)):  # [n, n] at a time
    sims = u @ u.T
    shares[:, layer] = ((sims >= r).sum(-1) - (np.diagonal(sims) >= r)) / (n - 1)  # not itself
  return shares


@register
@dataclasses.dataclass
class Crowding:
  """Stream crowding of the heads' outputs (module docstring).

  quantile: the share of clean pairs nearer than each layer's radius is 1 - quantile;
  seed: of the split of the clean rows between radii and z-scores.
  """
  name: ClassVar[str] = "crowding"
  set_level: ClassVar[bool] = True  # scores depend on the inputs scored together
  quantile: float = 0.99
  seed: int = 0

  def __post_init__(self):
    validation.in_range("crowding.quantile", self.quantile, 0.0, 1.0, open_=True)
    validation.at_least("crowding.seed", self.seed, 0)
    self._state: dict[str, np.ndarray] = {}

  def features(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    """[n, L, N(N-1)/2]: each layer's pairwise head-output cosines."""
    flat = np.asarray(OutputProfile().features(victim, examples), np.float64)
    return flat.reshape(len(examples), victim.model.config.num_layers, -1)

  def fit(self, victim: Victim, clean: Sequence[TextExample]) -> "Crowding":
    if len(clean) < 8:
      raise InputError(f"crowding needs at least 8 clean rows to fit, got {len(clean)}.")
    features = self.features(victim, clean)
    ref, held = holdout_split(len(clean), 0.5, self.seed)
    mean, std = features[ref].mean(0), features[ref].std(0) + 1e-6
    units = unit_rows(features[ref], mean, std)
    pairs = np.triu_indices(len(ref), 1)
    radius = np.array([np.quantile((u @ u.T)[pairs], self.quantile)
                       for u in units.transpose(1, 0, 2)])
    shares = near_shares(unit_rows(features[held], mean, std), radius)
    self._state = {"mean": mean, "std": std, "radius": radius,
                   "share_mean": shares.mean(0),
                   "share_std": np.maximum(shares.std(0), 1.0 / (len(held) - 1))}
    return self

  def score(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    require_fitted(self.name, self._state)
    s = self._state
    shares = near_shares(unit_rows(self.features(victim, examples), s["mean"], s["std"]),
                         s["radius"])
    return ((shares - s["share_mean"]) / s["share_std"]).max(-1)

  def settings(self) -> dict:
    return dataclasses.asdict(self)

  def state(self) -> dict[str, np.ndarray]:
    return dict(self._state)

  def load_state(self, state: dict[str, np.ndarray]) -> None:
    self._state = {k: np.asarray(state[k]) for k in ("mean", "std", "radius", "share_mean",
                                                     "share_std")}
