"""Cosine similarity between attention heads (paper eq. 2-3) and its statistics.

  head_similarity      a view of the maps -> head-by-head cosine, per input
  max_other_similarity eq. 5's max_{j != h} cos(A_h, A_j)
  pair_statistics      Figure 1 / Table 1: fraction of pairs above 0.99, and
                       the 99th percentile, per input or pooled over inputs
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from jax_attnalign.analysis.views import View, resolve_view, select_layers, view_block

Array = jax.Array
Scope = Literal["layer", "model"]


def head_cosine(maps: Array, valid: Array | None = None, eps: float = 1e-12) -> Array:
  """Cosine similarity between every pair of heads' flattened maps (eq. 2-3).

  maps: [..., N, F] float, each head's map flattened row-major; valid: [..., F]
  bool (shared by the heads), the entries that take part, so padding is
  excluded. Returns [..., N, N].

  >>> head_cosine(jnp.eye(3)[None]).shape
  (1, 3, 3)
  >>> head_cosine(jnp.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])).round(3).tolist()
  [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
  """
  if valid is not None:
    maps = jnp.where(valid[..., None, :], maps, 0.0)
  maps = maps.astype(jnp.float32)
  unit = maps / jnp.maximum(jnp.linalg.norm(maps, axis=-1, keepdims=True), eps)
  return jnp.einsum("...nf,...mf->...nm", unit, unit)


def head_similarity(maps: Array, view: View | str, *, attention_mask: Array,
                    special_mask: Array | None = None,
                    prompt_lengths: Array | None = None, is_decoder: bool = False,
                    scope: Scope = "layer") -> Array:
  """Head-by-head cosine of the viewed blocks (eq. 2-3), for every input.

  maps: [L, B, N, T, T] float; attention_mask, special_mask: [B, T];
  prompt_lengths: [B] int (decoders, see `views`). Entries outside the view
  (padding included) take no part. scope='layer' compares heads within each
  layer: [B, L', N, N]; scope='model' compares all heads of the viewed layers,
  ordered (layer, head): [B, L' N, L' N].

  Example, random maps of 2 layers x 4 heads for 3 inputs of 6 tokens:
    >>> import numpy as np
    >>> maps = np.random.default_rng(0).dirichlet(np.ones(6), (2, 3, 4, 6))  # [L, B, N, T, T]
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0], [1, 4, 4, 4, 4, 2]])
    >>> similarity = jax.jit(head_similarity, static_argnums=1)  # the view is static
    >>> cos = similarity(maps, "cls_row_nospecial", attention_mask=jnp.sign(ids),
    ...                  special_mask=(ids == 1) | (ids == 2))
    >>> cos.shape, bool(jnp.allclose(jnp.diagonal(cos, axis1=-2, axis2=-1), 1.0))  # [B, L, N, N]
    ((3, 2, 4, 4), True)
  """
  if scope not in ("layer", "model"):
    raise ValueError(f"scope must be 'layer' or 'model', got {scope!r}.")
  view = resolve_view(view)

  def one_input(m, mask, special, prompt_length):  # m: [L', N, T, T]
    block, _ = view_block(m, view, attention_mask=mask, special_mask=special,
                          prompt_length=prompt_length, is_decoder=is_decoder)
    flat = block.reshape(*block.shape[:2], -1)  # [L', N, F], row-major (eq. 2)
    if scope == "model":
      flat = flat.reshape(-1, flat.shape[-1])  # [L' N, F]
    return head_cosine(flat)

  return jax.vmap(one_input, in_axes=(1, 0, 0, 0))(
      select_layers(maps, view), attention_mask, special_mask, prompt_lengths)


def max_other_similarity(cosine: Array) -> Array:
  """Each head's largest cosine to another head (eq. 5's max_{j != h}).

  cosine: [..., M, M] -> [..., M]. Layer scope: [..., L, N, N] -> [..., L, N];
  model scope: [..., L N, L N] -> [..., L N] (reshape to [..., L, N]).

  >>> cos = jnp.array([[1.0, 0.9, 0.2], [0.9, 1.0, 0.5], [0.2, 0.5, 1.0]])
  >>> print(max_other_similarity(cos))
  [0.9 0.9 0.5]
  """
  m = cosine.shape[-1]
  return jnp.max(jnp.where(jnp.eye(m, dtype=bool), -jnp.inf, cosine), axis=-1)


def pair_statistics(cosine: Array, threshold: float = 0.99, percentile: float = 99.0,
                    pool_axis: int | None = None) -> dict[str, Array]:
  """Figure 1 / Table 1 statistics over the distinct head pairs of cosine [..., N, N].

  Returns {'frac_above': fraction of pairs with cosine > threshold,
  'percentile': that percentile of pairwise cosine}, each of shape [...]. With
  `pool_axis` (an axis of [...], e.g. 0 for the inputs of [B, L, N, N]) the
  pairs of all entries along it are pooled into one set, and that axis is gone.

  Example, 3 heads of one layer for 2 inputs ([B, L, N, N]):
    >>> cos = jnp.array([[1.0, 0.995, 0.2], [0.995, 1.0, 0.5], [0.2, 0.5, 1.0]])
    >>> cos = jnp.stack([cos, jnp.eye(3)])[:, None]
    >>> pair_statistics(cos)["frac_above"].shape  # [B, L]
    (2, 1)
    >>> [round(float(v), 3) for v in pair_statistics(cos)["frac_above"].ravel()]
    [0.333, 0.0]
    >>> [round(float(v), 3) for v in pair_statistics(cos, pool_axis=0)["frac_above"]]  # [L]
    [0.167]
  """
  n = cosine.shape[-1]
  rows, cols = jnp.triu_indices(n, k=1)
  pairs = cosine[..., rows, cols]  # [..., N (N - 1) / 2]
  if pool_axis is not None:
    pairs = jnp.moveaxis(pairs, pool_axis % (cosine.ndim - 2), -2)
    pairs = pairs.reshape(*pairs.shape[:-2], -1)
  return {"frac_above": jnp.mean(pairs > threshold, axis=-1),
          "percentile": jnp.percentile(pairs, percentile, axis=-1)}
