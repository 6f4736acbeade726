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
  """A head's class from its safety score (`classify_heads`), stored as its int.

  >>> HeadClass(2).name, int(HeadClass.SUSPICIOUS)
  ('SAFE', 0)
  """
  SUSPICIOUS = 0
  INTERMEDIATE = 1
  SAFE = 2


class EmptySafeSetError(ValueError):
  """No head is safe, so the safe-head mean of eq. 6 is undefined.

  >>> try:
  ...   require_safe_heads(np.zeros((2, 4), np.int32))  # every head suspicious
  ... except EmptySafeSetError as e:
  ...   print(e)
  No head is safe ({'suspicious': 8, 'intermediate': 0, 'safe': 0}): ...
  """


def safety_scores(max_similarity: Array, importance: Array, alpha: float = 0.7,
                  similarity_term: SimilarityTerm = "minmax") -> Array:
  """Eq. 5 for every head. max_similarity, importance: [L, N] (importance already
  normalised, e.g. by its global max). Returns S: [L, N].

  A head with a near twin and high importance scores low (suspicious):
    >>> s = safety_scores(jnp.array([[0.99, 0.5, 0.6]]), jnp.array([[1.0, 0.1, 0.2]]))
    >>> [round(float(v), 3) for v in s[0]]
    [0.0, 0.97, 0.797]
  """
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
  """HeadClass per head [L, N] (int): S < tau suspicious, S > 1 - tau safe.

  >>> classify_heads(np.array([[0.1, 0.5, 0.9]]), tau=0.3).tolist()
  [[0, 1, 2]]
  """
  if not 0.0 <= tau <= 0.5:
    raise ValueError(f"tau must lie in [0, 0.5] (so that tau <= 1 - tau), got {tau}.")
  scores = np.asarray(scores)
  labels = np.full(scores.shape, HeadClass.INTERMEDIATE, np.int32)
  labels[scores < tau] = HeadClass.SUSPICIOUS
  labels[scores > 1.0 - tau] = HeadClass.SAFE
  return labels


def class_counts(labels: np.ndarray) -> dict[str, int]:
  """{'suspicious': n, 'intermediate': n, 'safe': n} of a label array.

  >>> class_counts(np.array([[0, 1, 2], [2, 2, 1]]))
  {'suspicious': 1, 'intermediate': 2, 'safe': 3}
  """
  return {c.name.lower(): int(np.sum(np.asarray(labels) == c)) for c in HeadClass}


def require_safe_heads(labels: np.ndarray) -> np.ndarray:
  """The safe-head mask [L, N]; raises EmptySafeSetError (with the counts and the
  remedies) when there is none, instead of averaging over an empty set.

  >>> require_safe_heads(np.array([[0, 1, 2], [2, 2, 1]])).astype(int).tolist()
  [[0, 0, 1], [1, 1, 0]]
  """
  safe = np.asarray(labels) == HeadClass.SAFE
  if not safe.any():
    raise EmptySafeSetError(
        f"No head is safe ({class_counts(labels)}): eq. 6's safe-head mean is "
        "undefined. Lower tau, use similarity_term='minmax', or choose a view "
        "in which heads are less alike.")
  return safe
