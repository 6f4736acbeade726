"""jax_attnalign: find and remove backdoors in transformers by reading their attention heads.

Public entry points:
  load_pretrained(path, *, task=None, num_labels=None, dtype=...) -> (model, params)
  save_pretrained(model, params, out_dir)
  generate(model, params, input_ids, attention_mask, *, max_new_tokens, ...)
  attention_maps(intermediates) -> [L, B, N, T, S]
"""

from jax_attnalign.models import ModelConfig, ModelOutput, attention_maps, build_model
from jax_attnalign.models.generation import GenerationOutput, generate
from jax_attnalign.models.hf_io import load_pretrained, save_pretrained

__version__ = "0.1.0"

__all__ = ["GenerationOutput", "ModelConfig", "ModelOutput", "attention_maps",
           "build_model", "generate", "load_pretrained", "save_pretrained"]
