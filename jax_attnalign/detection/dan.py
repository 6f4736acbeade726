"""DAN (Chen et al. 2022, "Expose Backdoors on the Way: A Feature-Based Efficient
Defense against Textual Backdoor Attacks"): triggered inputs sit far from the
clean classes in the intermediate layers' [CLS] representations.

Needs: clean rows with their labels (the defender's), no extra model. Following
the authors' code (github.com/lancopku/DAN, `evaluate_dan.py --score_ensemble --std`):

  * features: each layer's output at the first token ([CLS] for BERT),
    `layers.{i}.resid_post[:, 0]`, every layer (not the embeddings); for a chat
    decoder (`chat.ChatVictim`) at the last prompt token, which answers;
  * fit, per layer, on 80% of the clean rows: the class means and one shared
    covariance shrunk toward the identity (scikit-learn's ShrunkCovariance,
    s = 0.1, which the code uses);
  * a layer's score: the squared Mahalanobis distance to the nearest class mean
    (the minimum over classes, not the predicted class's mean: the code takes
    the max of the negated distances over classes);
  * each layer's score standardised by its mean and std on the other 20% (held
    out: in-sample distances are biased low), then the maximum over layers (the
    paper's aggregation; the code's `--agg min` of the negated scores; 'mean'
    is its README example's).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar, Sequence

import jax
import numpy as np

from jax_attnalign import validation
from jax_attnalign.data.types import TextExample
from jax_attnalign.detection._profile import (fit_gaussian, holdout_split, layer_summaries,
                                              mahalanobis, per_example, readout,
                                              require_fitted, standardizer)
from jax_attnalign.detection.base import Victim, register

AGGREGATIONS = ("max", "mean")


@functools.partial(jax.jit, static_argnames="model")
def cls_states(model, params, batch: dict) -> jax.Array:
  """Every layer's output at the readout token ([CLS]; a decoder's last prompt
  token): [B, L, D]."""
  return layer_summaries(model, params, batch, "resid_post", lambda x, _: readout(x, batch))


@register
@dataclasses.dataclass
class DAN:
  """Distance-based anomaly score of [CLS] representations over layers (module docstring).

  shrinkage: the covariance's weight on the identity target, in [0, 1] (None:
  Ledoit-Wolf's); holdout: the fraction of clean rows held out for the layers'
  standardisation; seed: of that split; aggregation: 'max' or 'mean' over layers.
  """
  name: ClassVar[str] = "dan"
  shrinkage: float | None = 0.1
  holdout: float = 0.2
  seed: int = 0
  aggregation: str = "max"

  def __post_init__(self):
    if self.shrinkage is not None:
      validation.in_range("dan.shrinkage", self.shrinkage, 0.0, 1.0)
    validation.in_range("dan.holdout", self.holdout, 0.0, 1.0, open_=True)
    validation.at_least("dan.seed", self.seed, 0)
    validation.choice("dan.aggregation", self.aggregation, AGGREGATIONS)
    self._state: dict[str, np.ndarray] = {}

  def fit(self, victim: Victim, clean: Sequence[TextExample]) -> "DAN":
    """Fits on clean rows and their labels (one class for a victim without classes:
    an instruction-following chat decoder's prompts)."""
    states = per_example(victim, clean, cls_states)  # [n, L, D]
    labels = np.array([e.label if victim.num_classes else 0 for e in clean])
    fit_rows, held = holdout_split(len(clean), self.holdout, self.seed)
    gaussians = [fit_gaussian(layer[fit_rows], labels[fit_rows], shrinkage=self.shrinkage,
                              standardize=False) for layer in states.transpose(1, 0, 2)]
    self._state = {"means": np.stack([m for m, _ in gaussians]),  # [L, C, D]
                   "precisions": np.stack([p for _, p in gaussians])}  # [L, D, D]
    self._state["norm_mean"], self._state["norm_std"] = standardizer(
        self.layer_scores(states[held]))
    return self

  def layer_scores(self, states: np.ndarray) -> np.ndarray:
    """Each layer's distance to its nearest class mean, [n, L, D] -> [n, L]."""
    return np.stack([mahalanobis(states[:, i], m, p).min(-1) for i, (m, p) in
                     enumerate(zip(self._state["means"], self._state["precisions"]))], -1)

  def score(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    require_fitted(self.name, self._state)
    scores = self.layer_scores(per_example(victim, examples, cls_states))
    standard = (scores - self._state["norm_mean"]) / self._state["norm_std"]
    return standard.max(-1) if self.aggregation == "max" else standard.mean(-1)

  def settings(self) -> dict:
    return dataclasses.asdict(self)

  def state(self) -> dict[str, np.ndarray]:
    return dict(self._state)

  def load_state(self, state: dict[str, np.ndarray]) -> None:
    self._state = {k: np.asarray(state[k]) for k in ("means", "precisions", "norm_mean",
                                                     "norm_std")}
