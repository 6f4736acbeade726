"""Online detector: flags inputs whose heads are abnormally alike (paper, deployment).

Each input is scored with a head-similarity statistic of one view, averaged
over the viewed layers and computed layer by layer inside the forward pass
(`streaming_head_similarity`). Calibration on clean inputs sets the threshold
at the (1 - fpr) quantile of their scores, so about `fpr` of clean inputs are
flagged. The calibration is saved and loaded as JSON (never pickled).

A score that is not finite (NaN from a broken input or weights) is flagged, and
logged as such: `NaN > threshold` is false, and must not let an input through.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jax_attnalign.analysis.similarity import pair_statistics
from jax_attnalign.analysis.streaming import streaming_head_similarity
from jax_attnalign.analysis.views import resolve_view
from jax_attnalign import validation
from jax_attnalign.data.files import write_json
from jax_attnalign.defense import checks
from jax_attnalign.errors import CheckpointError

Statistic = Literal["mean", "percentile", "frac_above"]
STATISTICS = ("mean", "percentile", "frac_above")


def input_scores(model, params, batch: dict, view: str, statistic: Statistic = "mean",
                 *, special_mask=None, prompt_lengths=None) -> np.ndarray:
  """One score per input [B]: the statistic of its pairwise head cosines per
  layer ('mean' cosine, 99th 'percentile', 'frac_above' 0.99), averaged over layers.

  Example, a tiny random BERT (2 layers x 4 heads):
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]]); mask = jnp.sign(ids)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> batch = {"input_ids": ids, "attention_mask": mask}
    >>> scores = input_scores(model, params, batch, "cls_row_nospecial", "percentile",
    ...                       special_mask=(ids == 1) | (ids == 2))
    >>> scores.shape, bool(((-1 <= scores) & (scores <= 1)).all())  # [B], cosines
    ((2,), True)
  """
  checks.choice("input_scores: statistic", statistic, STATISTICS)
  resolve_view(view)
  validation.batch_inputs(model.config, batch, where="input_scores")
  return np.asarray(jax.device_get(batch_scores(
      model, params, batch["input_ids"], batch["attention_mask"], view, statistic,
      special_mask=special_mask, prompt_lengths=prompt_lengths)))


def layer_statistics(cosine: jax.Array) -> dict[str, jax.Array]:
  """Every statistic of STATISTICS over the distinct head pairs of [..., N, N]: [...]."""
  n = cosine.shape[-1]
  rows, cols = jnp.triu_indices(n, k=1)
  return {"mean": jnp.mean(cosine[..., rows, cols], axis=-1), **pair_statistics(cosine)}


@functools.partial(jax.jit, static_argnames=("model", "view", "statistic", "per_layer"))
def batch_scores(model, params, input_ids, attention_mask, view: str,
                 statistic: Statistic | tuple[Statistic, ...] = "mean", *, special_mask=None,
                 prompt_lengths=None, per_layer: bool = False):
  """`input_scores` as a pure, jitted function of arrays: [B], or with
  `per_layer` each viewed layer's statistic before the average: [B, L']. A tuple
  of statistics gives {statistic: scores} from one forward pass."""
  cos = streaming_head_similarity(model, params, input_ids, attention_mask, view,
                                  special_mask=special_mask,
                                  prompt_lengths=prompt_lengths)  # [B, L', N, N]
  stats = layer_statistics(cos)  # under jit, the statistics not asked for are pruned
  pick = lambda layers: layers if per_layer else jnp.mean(layers, axis=-1)
  if isinstance(statistic, tuple):
    return {name: pick(stats[name]) for name in statistic}
  return pick(stats[statistic])


@dataclasses.dataclass(frozen=True)
class Threshold:
  """A threshold calibrated on clean scores, and their summary; `flag(scores)` is
  True above it, and for every score that is not finite (logged as such).

  >>> Threshold(fpr=0.05, threshold=0.9, clean_count=256, clean_mean=0.7,
  ...           clean_std=0.1).flag([0.5, 0.95, np.nan]).tolist()
  [False, True, True]
  """
  fpr: float
  threshold: float
  clean_count: int
  clean_mean: float
  clean_std: float

  def __post_init__(self):
    owner = type(self).__name__
    checks.in_range(f"{owner}.fpr", self.fpr, 0.0, 1.0, open_=True)
    for name in ("threshold", "clean_mean", "clean_std"):
      checks.finite(f"{owner}.{name}", getattr(self, name))
    checks.at_least(f"{owner}.clean_count", self.clean_count, 2)

  def flag(self, scores) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    broken = ~np.isfinite(scores)
    if broken.any():
      logging.warning("%s: %d of %d scores are not finite (inputs %s); they are flagged. "
                      "Check those inputs' token ids and the model's weights.",
                      type(self).__name__, int(broken.sum()), scores.size,
                      np.flatnonzero(broken)[:8].tolist())
    return broken | (scores > self.threshold)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Detector(Threshold):
  """The paper's detector: a calibrated threshold on an input score of a view and
  statistic (`input_scores`).

  Example (`calibrate_detector` makes one from clean scores):
    >>> detector = Detector(view="cls_row", statistic="mean", fpr=0.05, threshold=0.9,
    ...                     clean_count=256, clean_mean=0.7, clean_std=0.1)
    >>> detector.flag(np.array([0.85, 0.95])).tolist()  # True: flagged as triggered
    [False, True]
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:  # JSON, never pickled
    ...   detector.save(os.path.join(tmp, "detector.json"))
    ...   Detector.load(os.path.join(tmp, "detector.json")) == detector
    True
  """
  view: str
  statistic: str

  def __post_init__(self):
    checks.view("Detector.view", self.view)
    checks.choice("Detector.statistic", self.statistic, STATISTICS)
    super().__post_init__()

  def save(self, path: str | pathlib.Path) -> None:
    write_json(path, dataclasses.asdict(self))

  @classmethod
  def load(cls, path: str | pathlib.Path) -> "Detector":
    try:
      return cls(**json.loads(pathlib.Path(path).read_text()))
    except (UnicodeDecodeError, ValueError, TypeError) as e:  # JSONDecodeError: a ValueError
      raise CheckpointError(f"{path} is not a detector calibration saved by Detector.save "
                            f"({e}). Recalibrate with calibrate_detector.") from e


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """Which detector to calibrate on clean inputs, and on how many.

  The default view and statistic were measured on the BadNets MiniLM victim: the
  last layer's [CLS]-row 99th-percentile cosine separates triggered inputs best
  (AUROC 0.997; all layers' mean cosine: 0.49).

  >>> config = DetectorConfig()
  >>> config.view, config.statistic, config.fpr
  ('cls_row_last_layer', 'percentile', 0.05)
  >>> DetectorConfig(view="cls")
  Traceback (most recent call last):
  ...
  ValueError: DetectorConfig.view must be a named view, one of (...), got 'cls'.
  """
  view: str = "cls_row_last_layer"
  statistic: Statistic = "percentile"
  fpr: float = 0.05
  calibration_size: int = 256  # clean inputs `sanitize` calibrates on when given no detector

  def __post_init__(self):
    checks.view("DetectorConfig.view", self.view)
    checks.choice("DetectorConfig.statistic", self.statistic, STATISTICS)
    checks.in_range("DetectorConfig.fpr", self.fpr, 0.0, 1.0, open_=True)
    checks.at_least("DetectorConfig.calibration_size", self.calibration_size, 2)


def calibrate_detector(clean_scores: np.ndarray, *, view: str, statistic: Statistic = "mean",
                       fpr: float = 0.05) -> Detector:
  """The detector flagging about `fpr` of clean inputs: threshold = the (1 - fpr)
  quantile of clean scores [n] (computed with `input_scores`).

  >>> detector = calibrate_detector(np.arange(101) / 100, view="cls_row", fpr=0.05)
  >>> detector.threshold, detector.flag([0.5, 0.99]).tolist()
  (0.95, [False, True])
  """
  return Detector(view=view, statistic=statistic,
                  **clean_threshold(clean_scores, fpr, where="calibrate_detector"))


def clean_threshold(clean_scores, fpr: float, *, where: str) -> dict:
  """The fields of `Threshold` flagging about `fpr` of clean inputs: threshold = the
  (1 - fpr) quantile ('higher') of the clean scores [n]; `where` names the caller
  in errors.

  >>> clean_threshold(np.arange(101) / 100, 0.05, where="example")["threshold"]
  0.95
  """
  checks.in_range(f"{where}: fpr", fpr, 0.0, 1.0, open_=True)
  clean_scores = np.asarray(clean_scores, np.float64).reshape(-1)
  if clean_scores.size < 2:
    raise ValueError(f"{where}: clean_scores needs at least 2 clean inputs' "
                     f"scores, got {clean_scores.size}.")
  validation.finite_values(f"{where}: clean_scores", clean_scores,
                           fix="a NaN threshold would flag nothing; drop or re-encode "
                               "those clean inputs, and check the model's weights")
  return {"fpr": fpr, "threshold": float(np.quantile(clean_scores, 1.0 - fpr, method="higher")),
          "clean_count": int(clean_scores.size), "clean_mean": float(clean_scores.mean()),
          "clean_std": float(clean_scores.std())}
