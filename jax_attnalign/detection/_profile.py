"""What DAN and the head-signal detectors share: per-input feature vectors read
off named intermediates in jitted batches, and a Gaussian of clean inputs'
vectors that scores new ones by their squared Mahalanobis distance.

The covariance is shrunk toward a multiple of the identity,
(1 - s) S + s (tr S / D) I: with s given (DAN's code uses scikit-learn's
ShrunkCovariance, s = 0.1), or s from the Ledoit-Wolf (2004) formula when the
dimension is near or above the number of rows (a head profile: 66 pairs x 6
layers = 396 dimensions from ~300 clean rows). With `standardize` each
dimension is first divided by its pooled standard deviation, so the shrinkage
target is the diagonal of S rather than one shared variance; at s = 0 the
distance is the same either way.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_attnalign import parallel, validation
from jax_attnalign.data.types import TextExample
from jax_attnalign.defense.scoring import per_input
from jax_attnalign.errors import InputError
from jax_attnalign.models import MODEL_INPUTS, run_with_hooks
from jax_attnalign.models.hooks import hook_name

# The batch fields a feature reads besides the model inputs: decoders' answer
# inputs (`chat.ChatVictim.encode`) also carry the answer's loss_mask and the
# slot where it starts (prompt_lengths).
FEATURE_INPUTS = MODEL_INPUTS + ("special_mask", "prompt_lengths", "loss_mask")


def readout(x: jax.Array, batch: dict) -> jax.Array:
  """x [B, T, ...] at each row's readout slot: [B, ...]. Encoders: [CLS] (slot 0);
  decoders' answer inputs: the last prompt token, whose output is the answer's
  first token (prompts are left-padded to prompt_lengths slots)."""
  if "prompt_lengths" not in batch:
    return x[:, 0]
  return jnp.take_along_axis(x, (batch["prompt_lengths"] - 1).reshape(
      (-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]


def ledoit_wolf_shrinkage(centered: np.ndarray) -> float:
  """The Ledoit-Wolf weight s of the identity target for rows [n, D] of mean 0."""
  n, d = centered.shape
  cov = centered.T @ centered / n
  mu = np.trace(cov) / d
  delta = np.sum((cov - mu * np.eye(d)) ** 2) / d  # distance of S to the target
  squares = centered ** 2
  beta = (np.sum(squares.T @ squares) / n - np.sum(cov ** 2)) / (d * n)  # variance of S
  return float(min(beta, delta) / delta) if delta > 0 else 1.0


def fit_gaussian(features, labels=None, *, shrinkage: float | None = None,
                 standardize: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Class means [C, D] (one per distinct label, in sorted order; one class when
  `labels` is None) and the precision [D, D] of their shared, shrunk covariance.

  shrinkage: s in [0, 1], or None for Ledoit-Wolf's.
  """
  x = np.asarray(features, np.float64)
  labels = np.zeros(len(x), np.int64) if labels is None else np.asarray(labels)
  classes, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
  if x.ndim != 2 or not len(counts) or counts.min() < 2:
    raise InputError(f"fit_gaussian needs features [n, D] with at least 2 rows per class; "
                     f"got shape {x.shape} and class counts {counts.tolist()}.")
  validation.finite_values("fit_gaussian: features", x,
                           fix="check the clean inputs and the model's weights")
  means = np.stack([x[index == c].mean(0) for c in range(len(classes))])
  centered = x - means[index]
  scale = centered.std(0) if standardize else np.ones(x.shape[1])
  scale = np.where(scale > 1e-12, scale, 1.0)  # a constant dimension: left as is
  z = centered / scale
  cov = z.T @ z / len(z)
  s = ledoit_wolf_shrinkage(z) if shrinkage is None else shrinkage
  cov = (1.0 - s) * cov + s * np.trace(cov) / len(cov) * np.eye(len(cov))
  precision = np.linalg.pinv(cov, hermitian=True) / np.outer(scale, scale)
  return means, precision


def mahalanobis(features, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
  """Squared Mahalanobis distance of each row [n, D] to each mean [C, D]: [n, C]."""
  diff = np.asarray(features, np.float64)[:, None, :] - means[None]
  return np.einsum("ncd,de,nce->nc", diff, precision, diff, optimize=True)


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(fit rows, held-out rows) of n, a seeded random `fraction` held out (DAN: 20%),
  each at least 2 rows."""
  held = min(max(2, round(n * fraction)), n - 2)
  if held < 2:
    raise InputError(f"A held-out split needs at least 4 clean rows, got {n}.")
  order = np.random.default_rng(seed).permutation(n)
  return np.sort(order[held:]), np.sort(order[:held])


def standardizer(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std over the rows of held-out clean scores [n, K]: ([K], [K])."""
  return scores.mean(0), np.maximum(scores.std(0), 1e-12)


def require_fitted(name: str, fitted) -> None:
  if not fitted:
    raise ValueError(f"{name}: fit the detector (or load its state) before scoring.")


def layer_summaries(model, params, batch: dict, site: str, fn: Callable,
                    layers: Sequence[int] | None = None) -> jax.Array:
  """fn(value, name) of hook site `site` of each layer (all by default), computed
  inside the forward pass so the value dies there: [B, L', ...]."""
  layers = range(model.config.num_layers) if layers is None else layers
  names = tuple(hook_name(i, site) for i in layers)
  _, found = run_with_hooks(model, params, batch, summarize={names: fn})
  return jnp.stack([found[name] for name in names], axis=1)


def per_example(victim, examples: Sequence[TextExample], fn: Callable) -> np.ndarray:
  """fn(model, params, batch) -> [B, ...] (jitted, model static) of every example,
  data-parallel in batches of victim.batch_size: [n, ...]. The batches hold the
  model inputs and special_mask, never the labels."""
  if not len(examples):
    raise InputError("A detector needs at least one example to score or fit on.")
  arrays = victim.encode(examples)
  arrays = {k: arrays[k] for k in FEATURE_INPUTS if k in arrays}
  validation.batch_inputs(victim.model.config, arrays, where="detection features")
  return per_input(lambda batch: fn(victim.model, victim.params, batch), arrays,
                   victim.batch_size, parallel.data_mesh())
