"""Building blocks shared by the model families: attention, norms, rotary embeddings.

Einsum letters: B batch, T query positions, S key positions, N query heads,
K key/value heads, G query heads per key/value head, H head dim, D model dim.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_attnalign.models.config import ModelConfig
from jax_attnalign.models.hooks import NO_HOOKS, Hooks

Array = jax.Array
Dtype = Any

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

def activation(name: str) -> Callable[[Array], Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unsupported hidden_act {name!r}; supported: {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def past_the_end(ids: Array, size: int) -> Array:
  """ids with negative entries moved past the end of a table of `size` rows.

  A negative index would silently wrap to another token's row; past the end,
  the embedding lookup reads NaN (jnp.take's fill), which the detector flags
  and `validation.checked` reports as out-of-bounds indexing.

  >>> past_the_end(jnp.array([0, 3, -1]), 4).tolist()
  [0, 3, 4]
  """
  return jnp.where(ids < 0, size, ids)


def attention_mask(key_valid: Array, q_slots: Array, k_slots: Array, *,
                   causal: bool, sliding_window: int | None = None) -> Array:
  """Boolean mask [B, 1, T, S]: may query slot t attend to key slot s.

  key_valid: [B, S] bool (padding mask over key slots).
  q_slots: [T] and k_slots: [S] int, the positions of queries and keys in the
  (left-padded) sequence or cache. Sliding windows follow transformers: a query
  sees the keys with q - window < k <= q.
  """
  mask = key_valid[:, None, None, :]  # [B, 1, 1, S]
  q = q_slots[:, None]
  k = k_slots[None, :]
  if causal:
    mask = mask & (k <= q)[None, None]
  if sliding_window is not None:
    mask = mask & (k > q - sliding_window)[None, None]
  return mask


def rope_inverse_frequencies(config: ModelConfig) -> Array:
  """Inverse frequencies [H/2] of rotary embeddings, transformers' rope types."""
  dim = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  scaling = dict(config.rope_scaling)
  if config.rope_type == "linear":
    inv_freq = inv_freq / scaling["factor"]
  elif config.rope_type == "llama3":
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    inv_freq = jnp.where(medium, smoothed, scaled)
  return inv_freq


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
  """Rotates x [B, T, N, H] by positions [B, T] (transformers' rotate_half layout)."""
  freqs = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, H/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, H]
  cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


class RMSNorm(nn.Module):
  """Llama's RMSNorm: normalise in f32, scale in the compute dtype."""
  eps: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return jnp.asarray(scale, self.dtype) * x32.astype(self.dtype)


class Attention(nn.Module):
  """Multi-head (grouped-query) attention with heads as a weight axis.

  Kernels: query [D, N, H], key/value [D, K, H], out [N, H, D]. Probabilities are
  computed in f32. `hooks` (scoped to 'layers.<i>.attn', see models.hooks) sees
  q, k, v, the pattern [B, N, T, S] and z [B, T, N, H], each head's output before
  the output projection.
  """
  config: ModelConfig
  use_bias: bool
  rope: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    cfg = self.config
    dense = lambda features, axis, name: nn.DenseGeneral(
        features, axis=axis, use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name,
        kernel_init=nn.initializers.normal(0.02))
    self.query = dense((cfg.num_heads, cfg.head_dim), -1, "query")
    self.key = dense((cfg.num_kv_heads, cfg.head_dim), -1, "key")
    self.value = dense((cfg.num_kv_heads, cfg.head_dim), -1, "value")
    self.out = dense(cfg.hidden_size, (-2, -1), "out")
    self.dropout = nn.Dropout(cfg.attention_dropout)

  def __call__(self, x: Array, mask: Array, *, positions: Array | None = None,
               cache: dict | None = None, cache_index: Array | None = None,
               deterministic: bool = True, hooks: Hooks = NO_HOOKS,
               ) -> tuple[Array, dict | None]:
    """x: [B, T, D]; mask: [B, 1, T, S] bool. Returns ([B, T, D], updated cache).

    With a cache ({'k', 'v'}: [B, S_max, K, H]) the new keys and values are
    written at `cache_index` and attention runs over all S_max slots.
    """
    cfg = self.config
    q = self.query(x)  # [B, T, N, H]
    k = self.key(x)  # [B, T, K, H]
    v = self.value(x)  # [B, T, K, H]
    if self.rope:
      inv_freq = rope_inverse_frequencies(cfg)
      q = apply_rope(q, positions, inv_freq)
      k = apply_rope(k, positions, inv_freq)
    q, k, v = hooks(self, "q", q), hooks(self, "k", k), hooks(self, "v", v)
    if cache is not None:
      start = (0, cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
      cache = {"k": k, "v": v}  # [B, S_max, K, H]
    accumulator = hooks.accumulator("pattern")
    if accumulator is None:
      probs = hooks(self, "pattern", self._probs(q, k, mask))  # [B, N, T, S] f32
      heads = self._mix(self.dropout(probs, deterministic=deterministic), v)
    elif cfg.attention_dropout > 0 and not deterministic:
      raise ValueError("Accumulated attention patterns are for inference: call the "
                       "model with deterministic=True (no attention dropout).")
    else:
      heads = self._query_blocks(q, k, v, mask, accumulator, hooks)
    return self.out(hooks(self, "z", heads)), cache

  def _probs(self, q: Array, k: Array, mask: Array) -> Array:
    """Attention probabilities [B, N, T, S] (f32) of q [B, T, N, H], k [B, S, K, H]."""
    cfg = self.config
    b, t = q.shape[:2]
    groups = cfg.num_heads // cfg.num_kv_heads
    q = q.reshape(b, t, cfg.num_kv_heads, groups, cfg.head_dim)  # [B, T, K, G, H]
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k.astype(q.dtype),
                        preferred_element_type=jnp.float32)
    logits = logits * (cfg.head_dim ** -0.5)
    logits = logits.reshape(b, cfg.num_heads, t, k.shape[1])  # [B, N, T, S]
    return jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1)

  def _mix(self, probs: Array, v: Array) -> Array:
    """Each head's output [B, T, N, H] from probs [B, N, T, S] and v [B, S, K, H]."""
    cfg = self.config
    b, _, t, s = probs.shape
    groups = cfg.num_heads // cfg.num_kv_heads
    probs = probs.astype(self.dtype).reshape(b, cfg.num_kv_heads, groups, t, s)
    heads = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(self.dtype))
    return heads.reshape(b, t, cfg.num_heads, cfg.head_dim)

  def _query_blocks(self, q: Array, k: Array, v: Array, mask: Array,
                    accumulator, hooks: Hooks) -> Array:
    """Attention `accumulator.rows` query slots at a time (a lax.scan, so one
    block's [B, N, R, S] probabilities live at once); the pattern's summary over
    the blocks is sown, each head's output [B, T, N, H] returned."""
    b, t = q.shape[:2]
    rows = min(accumulator.rows, t)
    blocks = -(-t // rows)
    pad = blocks * rows - t
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    mask = jnp.broadcast_to(mask, (b, 1, t, mask.shape[-1]))
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)), constant_values=True)
    name = hooks.prefix + "pattern"

    def block(carry, start):
      total, heads = carry
      slots = start + jnp.arange(rows)
      probs = self._probs(jax.lax.dynamic_slice_in_dim(q, start, rows, axis=1), k,
                          jax.lax.dynamic_slice_in_dim(mask, start, rows, axis=2))
      probs = jnp.where((slots < t)[:, None], probs, 0.0)  # [B, N, R, S]
      part = accumulator.block(probs, slots, name)
      heads = jax.lax.dynamic_update_slice_in_dim(heads, self._mix(probs, v), start, axis=1)
      return (jax.tree_util.tree_map(jnp.add, total, part), heads), None

    zero = jax.eval_shape(lambda: accumulator.block(
        jnp.zeros((b, self.config.num_heads, rows, k.shape[1]), jnp.float32),
        jnp.arange(rows), name))
    zero = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), zero)
    # The blocks overwrite every slot, so any start value would do; one computed from
    # this layer's queries keeps the buffer in the layer. A zeros constant is shared
    # by all layers, and XLA:CPU scheduled each layer's copy of it (the loop writes in
    # place) at the program's start, holding L head outputs at once
    # (benchmarks/scaling.py, memory against depth).
    heads = q * 0  # [B, blocks * rows, N, H]
    (total, heads), _ = jax.lax.scan(block, (zero, heads), jnp.arange(blocks) * rows)
    hooks.sow(self, "pattern", accumulator.finish(total, name))
    return heads[:, :t]
