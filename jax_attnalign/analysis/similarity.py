"""Cosine similarity between attention heads (paper eq. 2-3) and its pair statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def head_cosine(maps: Array, valid: Array | None = None, eps: float = 1e-12) -> Array:
  """Cosine similarity between every pair of heads' flattened maps (eq. 2-3).

  maps: [..., N, F] float, each head's map flattened row-major; valid: [..., F]
  bool (shared by the heads), the entries that take part, so padding is
  excluded. Returns [..., N, N].

  >>> head_cosine(jnp.eye(3)[None]).shape
  (1, 3, 3)
  """
  if valid is not None:
    maps = jnp.where(valid[..., None, :], maps, 0.0)
  maps = maps.astype(jnp.float32)
  unit = maps / jnp.maximum(jnp.linalg.norm(maps, axis=-1, keepdims=True), eps)
  return jnp.einsum("...nf,...mf->...nm", unit, unit)


def pair_statistics(cosine: Array, threshold: float = 0.99,
                    percentile: float = 99.0) -> dict[str, Array]:
  """Figure 1 / Table 1 statistics over the distinct head pairs of cosine [..., N, N].

  Returns {'frac_above': fraction of pairs with cosine > threshold,
  'percentile': that percentile of pairwise cosine}, each of shape [...].
  """
  n = cosine.shape[-1]
  rows, cols = jnp.triu_indices(n, k=1)
  pairs = cosine[..., rows, cols]  # [..., N (N - 1) / 2]
  return {"frac_above": jnp.mean(pairs > threshold, axis=-1),
          "percentile": jnp.percentile(pairs, percentile, axis=-1)}
