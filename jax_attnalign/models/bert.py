"""BERT (post-LN encoder) with base, sequence-classification and masked-LM heads."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_attnalign.models import layers
from jax_attnalign.models.config import ModelConfig
from jax_attnalign.models.hooks import NO_HOOKS, Hooks
from jax_attnalign.models.outputs import ModelOutput

Array = jax.Array
BERT_TASKS = ("base", "classification", "masked_lm")


def _dense(features: int, name: str, module: nn.Module) -> nn.Dense:
  return nn.Dense(features, dtype=module.dtype, param_dtype=module.param_dtype,
                  kernel_init=nn.initializers.normal(0.02), name=name)


def _layer_norm(name: str, module: nn.Module) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=module.config.norm_eps, dtype=module.dtype,
                      param_dtype=module.param_dtype, name=name)


class Embeddings(nn.Module):
  config: ModelConfig
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, token_type_ids, position_ids, deterministic):
    cfg = self.config
    embed = lambda n, name: nn.Embed(
        n, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=nn.initializers.normal(0.02), name=name)
    x = (embed(cfg.vocab_size, "word_embeddings")(input_ids)
         + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
         + embed(cfg.max_position_embeddings, "position_embeddings")(position_ids))
    x = _layer_norm("norm", self)(x)
    return nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


class EncoderLayer(nn.Module):
  config: ModelConfig
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, hooks: Hooks, deterministic):
    """hooks: scoped to this layer ('layers.<i>')."""
    cfg = self.config
    drop = nn.Dropout(cfg.hidden_dropout)
    x = hooks(self, "resid_pre", x)
    attn, _ = layers.Attention(cfg, use_bias=True, rope=False, dtype=self.dtype,
                               param_dtype=self.param_dtype, name="attention")(
        x, mask, deterministic=deterministic, hooks=hooks.scope("attn"))
    x = _layer_norm("attention_norm", self)(x + drop(attn, deterministic=deterministic))
    h = MLP(cfg, self.dtype, self.param_dtype, name="mlp")(x, hooks.scope("mlp"))
    x = _layer_norm("output_norm", self)(x + drop(h, deterministic=deterministic))
    return hooks(self, "resid_post", x)


class MLP(nn.Module):
  config: ModelConfig
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, hooks: Hooks = NO_HOOKS):
    """hooks: scoped to this MLP ('layers.<i>.mlp')."""
    h = _dense(self.config.intermediate_size, "intermediate", self)(x)
    h = hooks(self, "hidden", layers.activation(self.config.hidden_act)(h))  # [B, T, F]
    return _dense(self.config.hidden_size, "output", self)(h)


class MaskedLMHead(nn.Module):
  config: ModelConfig
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, word_embeddings):
    cfg = self.config
    x = layers.activation(cfg.hidden_act)(_dense(cfg.hidden_size, "transform", self)(x))
    x = _layer_norm("norm", self)(x)
    bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), self.param_dtype)
    logits = jnp.einsum("BTD,VD->BTV", x, jnp.asarray(word_embeddings, self.dtype))
    return logits + jnp.asarray(bias, self.dtype)


class Bert(nn.Module):
  """BERT encoder; `task` picks the head ('base', 'classification', 'masked_lm')."""
  config: ModelConfig
  task: str = "base"
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  def setup(self):
    if self.task not in BERT_TASKS:
      raise ValueError(f"BERT task must be one of {BERT_TASKS}, got {self.task!r}.")
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embeddings = Embeddings(cfg, **kw)
    self.layers = [EncoderLayer(cfg, **kw) for _ in range(cfg.num_layers)]
    if self.task != "masked_lm":
      self.pooler = _dense(cfg.hidden_size, "pooler", self)
    if self.task == "classification":
      self.classifier = _dense(cfg.num_labels, "classifier", self)
      self.classifier_dropout = nn.Dropout(cfg.hidden_dropout)
    if self.task == "masked_lm":
      self.mlm = MaskedLMHead(cfg, **kw)

  def __call__(self, input_ids: Array, attention_mask: Array | None = None, *,
               token_type_ids: Array | None = None, position_ids: Array | None = None,
               output_hidden_states: bool = False, deterministic: bool = True,
               hooks: Hooks = NO_HOOKS) -> ModelOutput:
    """input_ids, attention_mask, token_type_ids: [B, T] int. hooks: what to
    capture, edit or summarise among the named intermediates (models.hooks).
    Ids outside the tables give NaN outputs (see `layers.past_the_end`); the
    entry points (`apply_batch`, ...) refuse them before the call."""
    cfg = self.config
    b, t = input_ids.shape
    if attention_mask is None:
      attention_mask = jnp.ones((b, t), jnp.int32)
    if token_type_ids is None:
      token_type_ids = jnp.zeros((b, t), jnp.int32)
    if position_ids is None:
      position_ids = jnp.broadcast_to(jnp.arange(t), (b, t))
    slots = jnp.arange(t)
    mask = layers.attention_mask(attention_mask.astype(bool), slots, slots, causal=False)
    input_ids, token_type_ids = (layers.past_the_end(input_ids, cfg.vocab_size),
                                 layers.past_the_end(token_type_ids, cfg.type_vocab_size))
    x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
    hidden = [x]
    for i, layer in enumerate(self.layers):
      x = layer(x, mask, hooks.scope(f"layers.{i}"), deterministic)
      hidden.append(x)
    pooled = logits = None
    if self.task != "masked_lm":
      pooled = jnp.tanh(self.pooler(x[:, 0]))  # [B, D], the [CLS] position
    if self.task == "classification":
      logits = self.classifier(self.classifier_dropout(pooled, deterministic=deterministic))
    elif self.task == "masked_lm":
      word_embeddings = self.embeddings.variables["params"]["word_embeddings"]["embedding"]
      logits = self.mlm(x, word_embeddings)
    return ModelOutput(logits=logits, last_hidden_state=x, pooled=pooled,
                       hidden_states=tuple(hidden) if output_hidden_states else None)
