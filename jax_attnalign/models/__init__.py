"""Flax BERT, Llama and Mistral with attention capture and per-head gates."""

from __future__ import annotations

import jax.numpy as jnp

from jax_attnalign.models.bert import Bert
from jax_attnalign.models.capture import attention_maps
from jax_attnalign.models.config import ModelConfig
from jax_attnalign.models.llama import Llama, init_cache, positions_from_mask
from jax_attnalign.models.outputs import ModelOutput


def build_model(config: ModelConfig, task: str | None = None, dtype=jnp.float32,
                param_dtype=jnp.float32) -> Bert | Llama:
  """The Flax module for `config` with the head for `task` (default: the family's LM/base head)."""
  if config.is_decoder:
    return Llama(config, task or "causal_lm", dtype=dtype, param_dtype=param_dtype)
  return Bert(config, task or "base", dtype=dtype, param_dtype=param_dtype)


__all__ = ["Bert", "Llama", "ModelConfig", "ModelOutput", "attention_maps",
           "build_model", "init_cache", "positions_from_mask"]
