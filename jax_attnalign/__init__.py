"""jax_attnalign: find and remove backdoors in transformers by reading their attention heads.

The names a notebook needs; the method's parts are in `jax_attnalign.analysis`
(head similarity, importance, safety) and `jax_attnalign.defense` (detector,
alignment, head-wise fine-tuning, `sanitize`):

  load_pretrained(path, *, task=None, num_labels=None, dtype=...) -> (model, params)
  save_pretrained(model, params, out_dir, *, tokenizer=None)
  run_with_hooks(model, params, batch, *, capture=None, edit=None) -> (output, {name: value})
  attention_maps(captured) -> [L, B, N, T, S]; PATTERNS, the filter that captures them
  generate(model, params, input_ids, attention_mask, *, max_new_tokens, ...)
  audit_checkpoint(path, clean, incoming, out_dir) -> verdict, sanitised checkpoint

>>> import jax_attnalign as ja
>>> ja.PATTERNS
'layers.*.attn.pattern'
"""

from jax_attnalign.models import (PATTERNS, Hooks, ModelConfig, ModelOutput, attention_maps,
                                  build_model, run_with_hooks, scale_heads)
from jax_attnalign.models.generation import GenerationOutput, generate
from jax_attnalign.models.hf_io import load_pretrained, save_pretrained

__version__ = "0.1.0"
_LAZY = {"AuditConfig": "audit", "audit_checkpoint": "audit"}  # scipy, matplotlib, orbax: seconds


def __getattr__(name: str):
  if name in _LAZY:
    import importlib  # pylint: disable=g-import-not-at-top
    return getattr(importlib.import_module(f"jax_attnalign.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'jax_attnalign' has no attribute {name!r}")

__all__ = ["AuditConfig", "GenerationOutput", "Hooks", "ModelConfig", "ModelOutput",
           "PATTERNS", "attention_maps", "audit_checkpoint", "build_model", "generate",
           "load_pretrained", "run_with_hooks", "save_pretrained", "scale_heads"]
