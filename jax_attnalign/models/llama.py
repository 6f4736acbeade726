"""Llama and Mistral decoders (RMSNorm, RoPE, SwiGLU, grouped-query attention).

Mistral is Llama plus a sliding attention window (`config.sliding_window`).
Left padding is handled: positions count only the valid tokens of each row.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_attnalign.models import layers
from jax_attnalign.models.config import ModelConfig
from jax_attnalign.models.hooks import NO_HOOKS, Hooks
from jax_attnalign.models.outputs import ModelOutput

Array = jax.Array
DECODER_TASKS = ("base", "causal_lm", "classification")


def _dense(features: int, use_bias: bool, name: str, module: nn.Module) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=module.dtype,
                  param_dtype=module.param_dtype,
                  kernel_init=nn.initializers.normal(0.02), name=name)


def positions_from_mask(attention_mask: Array) -> Array:
  """Positions [B, T] of left-padded rows: 0 at each row's first valid token."""
  return jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)


def last_token_slots(attention_mask: Array) -> Array:
  """[B]: each row's last valid slot, padded on either side (0 for an empty row);
  where a decoder classifier reads its class."""
  slots = jnp.arange(attention_mask.shape[-1])
  return jnp.maximum(jnp.max(jnp.where(attention_mask > 0, slots, -1), axis=-1), 0)


def init_cache(config: ModelConfig, batch: int, max_len: int,
               dtype=jnp.float32) -> list[dict[str, Array]]:
  """An empty key/value cache: per layer {'k', 'v'}: [B, S_max, K, H]."""
  shape = (batch, max_len, config.num_kv_heads, config.head_dim)
  return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
          for _ in range(config.num_layers)]


class MLP(nn.Module):
  config: ModelConfig
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, hooks: Hooks = NO_HOOKS):
    """hooks: scoped to this MLP ('layers.<i>.mlp')."""
    cfg = self.config
    gate = _dense(cfg.intermediate_size, cfg.mlp_bias, "gate", self)(x)
    up = _dense(cfg.intermediate_size, cfg.mlp_bias, "up", self)(x)
    h = hooks(self, "hidden", layers.activation(cfg.hidden_act)(gate) * up)  # SwiGLU [B, T, F]
    return _dense(cfg.hidden_size, cfg.mlp_bias, "down", self)(h)


class DecoderLayer(nn.Module):
  config: ModelConfig
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, positions, cache, cache_index, deterministic, hooks: Hooks):
    """hooks: scoped to this layer ('layers.<i>')."""
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = hooks(self, "resid_pre", x)
    h = layers.RMSNorm(cfg.norm_eps, **kw, name="input_norm")(x)
    h, cache = layers.Attention(cfg, use_bias=cfg.attention_bias, rope=True, **kw,
                                name="attention")(
        h, mask, positions=positions, cache=cache, cache_index=cache_index,
        deterministic=deterministic, hooks=hooks.scope("attn"))
    x = x + h
    h = layers.RMSNorm(cfg.norm_eps, **kw, name="post_attention_norm")(x)
    h = MLP(cfg, **kw, name="mlp")(h, hooks.scope("mlp"))
    return hooks(self, "resid_post", x + h), cache


class Llama(nn.Module):
  """Llama / Mistral decoder; `task` picks the head ('base', 'causal_lm', 'classification').

  label_ids (classification only): a chat classifier read as a classifier. Its
  C + 1 class logits at the last real position are the LM head's logits of these
  C tokens (each label word's first token) and, last, the log-sum-exp of every
  other token's: class C is "any other answer", so the softmax is the LM's own
  next-token distribution grouped, and cross-entropy on a label is the LM's loss
  on that token. There is no `score` head: the parameters are the causal LM's, so
  a classifier baseline trains and prunes the chat model itself. Empty: the
  `score` head of transformers' LlamaForSequenceClassification.
  """
  config: ModelConfig
  task: str = "causal_lm"
  label_ids: tuple[int, ...] = ()
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  def setup(self):
    if self.task not in DECODER_TASKS:
      raise ValueError(f"Decoder task must be one of {DECODER_TASKS}, got {self.task!r}.")
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size,
                                 embedding_init=nn.initializers.normal(0.02), **kw)
    self.layers = [DecoderLayer(cfg, **kw) for _ in range(cfg.num_layers)]
    self.norm = layers.RMSNorm(cfg.norm_eps, **kw)
    if self.label_ids and self.task != "classification":
      raise ValueError(f"label_ids is for task='classification', not {self.task!r}.")
    if (self.task == "causal_lm" or self.label_ids) and not cfg.tie_word_embeddings:
      self.lm_head = _dense(cfg.vocab_size, False, "lm_head", self)
    if self.task == "classification" and not self.label_ids:
      self.score = _dense(cfg.num_labels, False, "score", self)

  def __call__(self, input_ids: Array, attention_mask: Array | None = None, *,
               position_ids: Array | None = None,
               cache: list[dict[str, Array]] | None = None,
               cache_index: Array | int | None = None, cache_mask: Array | None = None,
               output_hidden_states: bool = False, deterministic: bool = True,
               hooks: Hooks = NO_HOOKS,
               logit_positions: Array | None = None) -> ModelOutput:
    """Forward pass over input_ids [B, T].

    attention_mask: [B, T], 1 for tokens, 0 for (left) padding. position_ids
    default to `positions_from_mask(attention_mask)`. For cached decoding pass
    `cache` (from `init_cache`), the slot `cache_index` where these tokens go, and
    `cache_mask` [B, S_max], the validity of every cache slot (prompt padding is
    0). hooks: what to capture, edit or summarise among the named intermediates
    (models.hooks).
    logit_positions: [B, P] int, causal_lm only: the LM head runs at these
    positions alone and logits are [B, P, V] (training computes the vocabulary
    projection only where the loss is).
    """
    cfg = self.config
    b, t = input_ids.shape
    if attention_mask is None:
      attention_mask = jnp.ones((b, t), jnp.int32)
    if position_ids is None:
      position_ids = positions_from_mask(attention_mask)
    q_slots = jnp.arange(t)
    if cache is None:
      key_valid, k_slots = attention_mask.astype(bool), q_slots
    else:
      if cache_index is None or cache_mask is None:
        raise ValueError("Cached decoding needs cache_index and cache_mask.")
      q_slots = q_slots + cache_index
      key_valid, k_slots = cache_mask.astype(bool), jnp.arange(cache_mask.shape[1])
    mask = layers.attention_mask(key_valid, q_slots, k_slots, causal=True,
                                 sliding_window=cfg.sliding_window)
    x = self.embed_tokens(layers.past_the_end(input_ids, cfg.vocab_size))
    hidden, new_cache = [x], []
    for i, layer in enumerate(self.layers):
      x, layer_cache = layer(x, mask, position_ids, None if cache is None else cache[i],
                             cache_index, deterministic, hooks.scope(f"layers.{i}"))
      new_cache.append(layer_cache)
      hidden.append(x)
    x = self.norm(x)
    hidden[-1] = x  # transformers reports the last hidden state after the norm
    logits = None
    if self.task == "causal_lm":
      at = x if logit_positions is None else jnp.take_along_axis(
          x, logit_positions[..., None], axis=1)  # [B, P, D]
      logits = self._lm_logits(at)  # [B, T or P, V]
    elif self.task == "classification":
      at = x[jnp.arange(b), last_token_slots(attention_mask)]  # [B, D]
      logits = self._label_logits(at) if self.label_ids else self.score(at)  # [B, C (+ 1)]
    return ModelOutput(logits=logits, last_hidden_state=x,
                       hidden_states=tuple(hidden) if output_hidden_states else None,
                       cache=None if cache is None else new_cache)

  def _lm_logits(self, x: Array) -> Array:
    return self.embed_tokens.attend(x) if self.config.tie_word_embeddings else self.lm_head(x)

  def _label_logits(self, x: Array) -> Array:
    """[B, D] -> [B, C + 1]: the label tokens' logits, then the other tokens' log-sum-exp."""
    logits = self._lm_logits(x).astype(jnp.float32)  # [B, V]
    ids = jnp.asarray(self.label_ids)
    others = jax.nn.logsumexp(logits.at[:, ids].set(-jnp.inf), axis=-1, keepdims=True)
    return jnp.concatenate([logits[:, ids], others], axis=-1)
