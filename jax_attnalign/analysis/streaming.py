"""Head similarity computed inside the forward pass, one layer at a time.

DESIGN.md ("Memory"): a 7B model at 2k tokens holds ~16 GiB of f32 maps per
sequence, while the per-layer head-by-head cosine matrices are a few KiB. Here
a `summarize` hook on each viewed layer's `layers.<i>.attn.pattern` turns the
probabilities [B, N, T, S] into the cosine of their viewed block [B, N, N] right
after the softmax, and only that is sown. Nothing captures the maps, so a
layer's maps are dead once the layer is done and under `jax.jit` XLA frees them
before the next layer: peak memory holds one layer's maps, not L of them. The
numbers equal `head_similarity` on captured maps.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jax_attnalign import validation
from jax_attnalign.analysis.similarity import head_similarity
from jax_attnalign.analysis.views import View, resolve_view
from jax_attnalign.models.hooks import Hooks, collect, hook_name

Array = jax.Array


def streaming_head_similarity(model, params, input_ids: Array, attention_mask: Array,
                              view: View | str, *, special_mask: Array | None = None,
                              prompt_lengths: Array | None = None,
                              **model_kwargs) -> Array:
  """Per-layer head cosine of the viewed blocks without keeping the maps.

  model: a Bert or Llama module (e.g. from `build_model`); input_ids,
  attention_mask, special_mask: [B, T]; prompt_lengths: [B] int (decoders, see
  `views`); model_kwargs go to `model.apply` (e.g. token_type_ids). Returns
  [B, L', N, N], equal to `head_similarity(maps, view, ..., scope='layer')`.
  Cross-layer ('model' scope) similarity needs every layer's block at once, so
  it is not offered here. Pure: jit it with `model` and `view` static.

  Example, a tiny random BERT (2 layers x 4 heads):
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]]); mask = jnp.sign(ids)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> fn = jax.jit(streaming_head_similarity, static_argnums=(0, 4))
    >>> special = (ids == 1) | (ids == 2)  # [CLS], [SEP]
    >>> cos = fn(model, params, ids, mask, "cls_row_nospecial", special_mask=special)
    >>> cos.shape  # [B, L, N, N]
    (2, 2, 4, 4)
  """
  validation.model_inputs(model.config, input_ids, attention_mask,
                          model_kwargs.get("token_type_ids"), where="streaming_head_similarity")
  view = resolve_view(view)
  selected = view.layer_indices(model.config.num_layers)
  layer_view = dataclasses.replace(view, layers="all")

  names = [hook_name(i, "attn.pattern") for i in selected]

  def layer_cosine(probs: Array, name: str) -> Array:  # probs: [B, N, T, S]
    cos = head_similarity(probs[None], layer_view, attention_mask=attention_mask,
                          special_mask=special_mask, prompt_lengths=prompt_lengths,
                          is_decoder=model.config.is_decoder)
    return cos[:, 0]  # [B, N, N]

  _, state = model.apply({"params": params}, input_ids, attention_mask,
                         hooks=Hooks(summarize={tuple(names): layer_cosine}),
                         mutable=["intermediates"], **model_kwargs)
  summaries = collect(state)
  return jnp.stack([summaries[name] for name in names], axis=1)
