"""Head-output crowding: a backdoor maps its triggered inputs onto one behaviour,
so in a monitored stream their heads' outputs are near-duplicates of many
others', while clean inputs' are as varied as the inputs. The classifier's
analogue of answer collapse (`collapse`), read off the heads instead of answers.

  detector = make_detector("crowding").fit(victim, clean_rows)
  calibration = calibrate(detector, victim, more_clean_rows, fpr=0.05)
  flags = calibration.flag(detector.score(victim, stream))  # a monitored stream

Features: each layer's pairwise cosines of the heads' outputs at [CLS] (a chat
decoder's last prompt token; `heads.OutputProfile`'s vector, the H of eq. 4), each
dimension standardised by the clean fit rows and the layer's vector scaled to unit
length. Two inputs are near in a layer when their vectors' cosine similarity is at
least the layer's radius: the `quantile` of those similarities among pairs of
clean fit rows (0.99, set a priori: one clean pair in a hundred counts as near).

Per layer, an input has k near neighbours among the scored set's n - 1 others and
c among the m clean fit rows. For a clean input both counts draw on one
near-neighbour probability, so k given c follows the beta-binomial predictive
BetaBinomial(n - 1, c + 1, m - c + 1) (a uniform prior on that probability), at
any n; the layer's p-value is its upper tail P(K >= k). A triggered input in a
stream holding others of its kind has more near neighbours than its clean
density predicts. The score is Fisher's sum of -log p over layers (frozen on two
development victims, docs/lab_notebook/4_detection_and_grid.md; the first form,
a share z-scored on held-out clean rows, lost calibration with the set's size).

Like answer collapse an input's score depends on the inputs scored with it
(`set_level`): a stream with one triggered input gives it nothing to match, and
the fewer triggered inputs a stream holds the less they stand out. For the same
reason its calibration is noisier than a per-input detector's: thresholds from
200 clean rows flagged 0.5% to 13% of fresh clean streams, from 1,000 rows 1% to
5.5% of them (docs/lab_notebook/7_calibration_rows.md): calibrate on as many
clean rows as there are.

Needs: clean rows, no labels, no trigger, no extra model. Scoring n inputs
compares every pair and every input with the m fit rows, one layer at a time
([n, n + m] floats).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Sequence

import numpy as np
from scipy import stats

from jax_attnalign import validation
from jax_attnalign.data.types import TextExample
from jax_attnalign.detection._profile import require_fitted
from jax_attnalign.detection.base import Victim, register
from jax_attnalign.detection.heads import OutputProfile
from jax_attnalign.errors import InputError


def unit_rows(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """[n, L, K] standardised by `mean`, `std` ([L, K]), each [K] vector at unit length."""
  z = (features - mean) / std
  return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def near_counts(units: np.ndarray, others: np.ndarray | None, radius: np.ndarray) -> np.ndarray:
  """[n, L]: per layer, how many rows of `others` ([m, L, K]; None: the other
  n - 1 rows of `units` [n, L, K]) have cosine similarity with the row at least
  `radius` [L]."""
  counts = np.empty(units.shape[:2])
  for layer, r in enumerate(radius):  # [n, n or m] at a time
    u = units[:, layer]
    sims = u @ (u if others is None else others[:, layer]).T
    counts[:, layer] = (sims >= r).sum(-1) - (np.diagonal(sims) >= r if others is None else 0)
  return counts


def neg_log_tail(k: np.ndarray, trials: int, c: np.ndarray, m: int) -> np.ndarray:
  """-log P(K >= k) for K ~ BetaBinomial(trials, c + 1, m - c + 1), elementwise
  (a tail below 1e-300 counts as 1e-300)."""
  tail = stats.betabinom.sf(k - 1, trials, c + 1, m - c + 1)
  return -np.log(np.clip(tail, 1e-300, 1.0))


@register
@dataclasses.dataclass
class Crowding:
  """Stream crowding of the heads' outputs (module docstring).

  quantile: the share of clean pairs nearer than each layer's radius is 1 - quantile.
  """
  name: ClassVar[str] = "crowding"
  set_level: ClassVar[bool] = True  # scores depend on the inputs scored together
  quantile: float = 0.99

  def __post_init__(self):
    validation.in_range("crowding.quantile", self.quantile, 0.0, 1.0, open_=True)
    self._state: dict[str, np.ndarray] = {}

  def features(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    """[n, L, N(N-1)/2]: each layer's pairwise head-output cosines."""
    flat = np.asarray(OutputProfile().features(victim, examples), np.float64)
    return flat.reshape(len(examples), victim.model.config.num_layers, -1)

  def fit(self, victim: Victim, clean: Sequence[TextExample]) -> "Crowding":
    if len(clean) < 8:
      raise InputError(f"crowding needs at least 8 clean rows to fit, got {len(clean)}.")
    features = self.features(victim, clean)
    mean, std = features.mean(0), features.std(0) + 1e-6
    units = unit_rows(features, mean, std)
    pairs = np.triu_indices(len(clean), 1)
    radius = np.array([np.quantile((u @ u.T)[pairs], self.quantile)
                       for u in units.transpose(1, 0, 2)])
    self._state = {"mean": mean, "std": std, "radius": radius, "reference": units}
    return self

  def score(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    require_fitted(self.name, self._state)
    if len(examples) < 2:
      raise InputError("crowding scores a set of inputs against each other: give at least 2.")
    s = self._state
    units = unit_rows(self.features(victim, examples), s["mean"], s["std"])
    k = near_counts(units, None, s["radius"])
    c = near_counts(units, s["reference"], s["radius"])
    return neg_log_tail(k, len(examples) - 1, c, len(s["reference"])).sum(-1)

  def settings(self) -> dict:
    return dataclasses.asdict(self)

  def state(self) -> dict[str, np.ndarray]:
    return dict(self._state)

  def load_state(self, state: dict[str, np.ndarray]) -> None:
    self._state = {k: np.asarray(state[k]) for k in ("mean", "std", "radius", "reference")}
