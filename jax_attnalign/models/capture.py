"""Reading captured attention probabilities back out of Flax intermediates."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from jax_attnalign.models.layers import CAPTURE_NAME

_LAYER = re.compile(r"layers_(\d+)$")


def attention_maps(intermediates) -> jax.Array:
  """Stacks every layer's sown attention probabilities: [L, B, N, T, S].

  `intermediates` is the 'intermediates' collection returned by
  `model.apply(..., capture_attention=True, mutable=['intermediates'])` (the
  collection itself, or the whole mutated-variables dict holding it).

  >>> out, state = model.apply({'params': params}, ids, capture_attention=True,
  ...                          mutable=['intermediates'])
  >>> maps = attention_maps(state)  # [L, B, N, T, S]
  """
  intermediates = intermediates.get("intermediates", intermediates)
  found = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      intermediates, is_leaf=lambda x: isinstance(x, tuple))[0]:
    keys = [getattr(p, "key", None) for p in path]
    if CAPTURE_NAME not in keys:
      continue
    layer = next((int(m.group(1)) for k in keys if isinstance(k, str)
                  for m in [_LAYER.match(k)] if m), None)
    if layer is None:
      raise ValueError(f"Captured attention at {keys} is not under a layers_<i> module.")
    found[layer] = leaf[-1] if isinstance(leaf, tuple) else leaf
  if not found:
    raise ValueError(
        "No attention probabilities in these intermediates: call model.apply with "
        "capture_attention=True and mutable=['intermediates'].")
  if sorted(found) != list(range(len(found))):
    raise ValueError(f"Captured attention is missing layers: found {sorted(found)}.")
  return jnp.stack([found[i] for i in range(len(found))])
