"""Flax BERT, Llama and Mistral with named intermediates to capture or edit (hooks)."""

from __future__ import annotations

import jax.numpy as jnp

from jax_attnalign import validation
from jax_attnalign.models.bert import Bert
from jax_attnalign.models.hooks import (PATTERNS, SITES, Accumulator, Hooks, attention_maps,
                                        collect, hook_name, layer_of, name_filter, scale_heads)
from jax_attnalign.models.config import ModelConfig
from jax_attnalign.models.llama import Llama, init_cache, last_token_slots, positions_from_mask
from jax_attnalign.models.outputs import ModelOutput


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def apply_batch(model, params, batch: dict, **kwargs):
  """`model.apply` on a batch dict: input_ids, attention_mask and, when present,
  token_type_ids; other fields (labels, loss_mask, ...) stay out. kwargs go on
  to the model (hooks, mutable, rngs, ...). The inputs are checked first
  (`validation.batch_inputs`: their values only outside `jax.jit`)."""
  validation.batch_inputs(model.config, batch, where="apply_batch")
  extra = {k: batch[k] for k in MODEL_INPUTS[2:] if k in batch}
  return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                     **extra, **kwargs)


def run_with_hooks(model, params, batch: dict, *, capture=None, edit=None, summarize=None,
                   **kwargs) -> tuple:
  """`apply_batch` with hooks: (output, {name: value} of what was captured or
  summarised). capture: a name filter; edit, summarize: {filter: fn(value, name)}
  (see models.hooks). Only the captured names are kept; a capture or summarize
  that matches no name is an error (a misspelt name would otherwise read as {}).

  Example, layer 0's intermediates with its head 3 switched off:
    >>> import jax
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]]); mask = jnp.sign(ids)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> batch = {"input_ids": ids, "attention_mask": mask}
    >>> gates = jnp.ones((2, 4)).at[0, 3].set(0.0)
    >>> out, captured = run_with_hooks(model, params, batch, capture="layers.0.attn.*",
    ...                                edit=scale_heads(gates))
    >>> out.logits.shape, captured["layers.0.attn.z"].shape  # z: [B, T, N, H]
    ((2, 2), (2, 6, 4, 4))
    >>> float(jnp.abs(captured["layers.0.attn.z"][:, :, 3]).max())  # edited before capture
    0.0
  """
  out, state = apply_batch(model, params, batch, mutable=["intermediates"], hooks=Hooks(
      capture=capture, edit=edit, summarize=summarize), **kwargs)
  captured = collect(state)
  if (capture is not None or summarize) and not captured:
    raise ValueError(f"capture={capture!r} / summarize matched no hook name; names are "
                     f"layers.<i>.<site> for sites {SITES}.")
  return out, captured


def build_model(config: ModelConfig, task: str | None = None, dtype=jnp.float32,
                param_dtype=jnp.float32) -> Bert | Llama:
  """The Flax module for `config` with the head for `task` (default: the family's LM/base head).

  Example, a tiny random BERT classifier:
    >>> import jax
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]]); mask = jnp.sign(ids)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> out = model.apply({"params": params}, ids, mask)
    >>> type(model).__name__, out.logits.shape, out.last_hidden_state.shape
    ('Bert', (2, 2), (2, 6, 16))
  """
  if config.is_decoder:
    return Llama(config, task or "causal_lm", dtype=dtype, param_dtype=param_dtype)
  return Bert(config, task or "base", dtype=dtype, param_dtype=param_dtype)


__all__ = ["MODEL_INPUTS", "PATTERNS", "SITES", "Accumulator", "Bert", "Hooks", "Llama",
           "ModelConfig", "ModelOutput", "apply_batch", "attention_maps", "build_model", "collect",
           "hook_name", "init_cache", "last_token_slots", "layer_of", "name_filter", "positions_from_mask",
           "run_with_hooks", "scale_heads"]
