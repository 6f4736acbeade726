"""Safety scores (paper eq. 5) and the head classes they induce.

  S = 1 - [alpha * sim + (1 - alpha) * G / max G]

`sim` is each head's largest cosine similarity to another head (eq. 5's
max_{j != h}), either raw as in the paper or min-max scaled to [0, 1] over the
heads, like the importance term (DESIGN.md: in the [CLS]-row view every head has
a near-twin, so raw similarity leaves no head safe). S < tau: suspicious;
S > 1 - tau: safe; otherwise intermediate.
"""

from __future__ import annotations

import enum
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
SimilarityTerm = Literal["minmax", "raw"]


class HeadClass(enum.IntEnum):
  SUSPICIOUS = 0
  INTERMEDIATE = 1
  SAFE = 2


class EmptySafeSetError(ValueError):
  """No head is safe, so the safe-head mean of eq. 6 is undefined."""


def safety_scores(max_similarity: Array, importance: Array, alpha: float = 0.7,
                  similarity_term: SimilarityTerm = "minmax") -> Array:
  """Eq. 5 for every head. max_similarity, importance: [L, N] (importance already
  normalised, e.g. by its global max). Returns S: [L, N]."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
  sim = jnp.asarray(max_similarity, jnp.float32)
  if similarity_term == "minmax":
    lo, hi = jnp.min(sim), jnp.max(sim)
    sim = jnp.where(hi > lo, (sim - lo) / jnp.maximum(hi - lo, 1e-30), 0.0)
  elif similarity_term != "raw":
    raise ValueError(f"similarity_term must be 'minmax' or 'raw', got {similarity_term!r}.")
  return 1.0 - (alpha * sim + (1.0 - alpha) * jnp.asarray(importance, jnp.float32))


def classify_heads(scores: Array, tau: float = 0.3) -> np.ndarray:
  """HeadClass per head [L, N] (int): S < tau suspicious, S > 1 - tau safe."""
  if not 0.0 <= tau <= 0.5:
    raise ValueError(f"tau must lie in [0, 0.5] (so that tau <= 1 - tau), got {tau}.")
  scores = np.asarray(scores)
  labels = np.full(scores.shape, HeadClass.INTERMEDIATE, np.int32)
  labels[scores < tau] = HeadClass.SUSPICIOUS
  labels[scores > 1.0 - tau] = HeadClass.SAFE
  return labels


def class_counts(labels: np.ndarray) -> dict[str, int]:
  """{'suspicious': n, 'intermediate': n, 'safe': n} of a label array."""
  return {c.name.lower(): int(np.sum(np.asarray(labels) == c)) for c in HeadClass}


def require_safe_heads(labels: np.ndarray) -> np.ndarray:
  """The safe-head mask [L, N]; raises EmptySafeSetError (with the counts and the
  remedies) when there is none, instead of averaging over an empty set."""
  safe = np.asarray(labels) == HeadClass.SAFE
  if not safe.any():
    raise EmptySafeSetError(
        f"No head is safe ({class_counts(labels)}): eq. 6's safe-head mean is "
        "undefined. Lower tau, use similarity_term='minmax', or choose a view "
        "in which heads are less alike.")
  return safe
