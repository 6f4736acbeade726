"""Head similarity computed inside the forward pass, one block of query rows at a time.

DESIGN.md ("Memory"): a 7B model at 2k tokens holds ~16 GiB of f32 maps per
sequence, while the per-layer head-by-head cosine matrices are a few KiB. Here
each viewed layer's `layers.<i>.attn.pattern` is accumulated (models.hooks'
Accumulator): the layer computes its attention `rows` query slots at a time and
adds each block's contribution to the Gram matrix of the heads' viewed blocks,
<A_n, A_m> = sum over rows of the row-wise dot products [B, N, N]; the cosine is
that Gram matrix normalised once the last block is in. Nothing captures the
maps, so the working memory holds one block of one layer's probabilities,
[B, N, rows, S], and grows linearly with the sequence length (but for the
model's boolean [B, T, S] mask, a quarter of one head's f32 map), and stays flat
in the number of layers (benchmarks/scaling.py). The numbers equal
`head_similarity` on captured maps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_attnalign import validation
from jax_attnalign.analysis.views import View, resolve_view, view_block
from jax_attnalign.models.hooks import Accumulator, Hooks, collect, hook_name

Array = jax.Array


def streaming_head_similarity(model, params, input_ids: Array, attention_mask: Array,
                              view: View | str, *, special_mask: Array | None = None,
                              prompt_lengths: Array | None = None, rows: int = 128,
                              **model_kwargs) -> Array:
  """Per-layer head cosine of the viewed blocks without keeping the maps.

  model: a Bert or Llama module (e.g. from `build_model`); input_ids,
  attention_mask, special_mask: [B, T]; prompt_lengths: [B] int (decoders, see
  `views`); rows: query slots per attention block (memory [B, N, rows, T] per
  layer; time barely depends on it); model_kwargs go to `model.apply` (e.g.
  token_type_ids). Returns [B, L', N, N], equal to `head_similarity(maps, view,
  ..., scope='layer')`. Cross-layer ('model' scope) similarity needs every
  layer's block at once, so it is not offered here. Pure: jit it with `model`,
  `view` and `rows` static.

  Example, a tiny random BERT (2 layers x 4 heads):
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]]); mask = jnp.sign(ids)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> fn = jax.jit(streaming_head_similarity, static_argnums=(0, 4),
    ...              static_argnames="rows")
    >>> special = (ids == 1) | (ids == 2)  # [CLS], [SEP]
    >>> cos = fn(model, params, ids, mask, "cls_row_nospecial", special_mask=special, rows=4)
    >>> cos.shape  # [B, L, N, N]
    (2, 2, 4, 4)
  """
  validation.model_inputs(model.config, input_ids, attention_mask,
                          model_kwargs.get("token_type_ids"), where="streaming_head_similarity")
  view = resolve_view(view)
  names = [hook_name(i, "attn.pattern") for i in view.layer_indices(model.config.num_layers)]

  def one_input(probs, slots, mask, special, prompt_length):  # probs: [N, R, S]
    block, _ = view_block(probs, view, attention_mask=mask, special_mask=special,
                          prompt_length=prompt_length, is_decoder=model.config.is_decoder,
                          row_slots=slots)
    return jnp.einsum("nrs,mrs->nm", block, block)  # this block's part of the Gram matrix

  def gram(probs, slots, name):  # probs: [B, N, R, S]
    return jax.vmap(one_input, in_axes=(0, None, 0, 0, 0))(
        probs, slots, attention_mask, special_mask, prompt_lengths)

  def cosine(total, name, eps=1e-12):  # as head_cosine: each norm floored at eps
    norm = jnp.maximum(jnp.sqrt(jnp.diagonal(total, axis1=-2, axis2=-1)), eps)
    return total / (norm[..., :, None] * norm[..., None, :])

  _, state = model.apply({"params": params}, input_ids, attention_mask,
                         hooks=Hooks(accumulate={tuple(names): Accumulator(gram, cosine, rows)}),
                         mutable=["intermediates"], **model_kwargs)
  summaries = collect(state)
  return jnp.stack([summaries[name] for name in names], axis=1)
