"""Attention safety alignment (paper eq. 6-7): pull suspicious heads to the safe mean.

  L_align(x) = sum_{h suspicious} || A_h(x) - mean_{s safe} A_s(x) ||_F^2

over the viewed blocks of the maps (`analysis.views`). The safe mean is a fixed
target (gradients do not flow into it). Which parameters move is the optimizer's
business: `alignment_optimizer` trains the q/k/v/o slices of the non-safe heads
and freezes the safe heads and everything outside attention (DESIGN.md's
default); `trainable="all_non_safe"` also lets the parameters outside attention
move.

  optimizer = alignment_optimizer(params, trainable="heads")
  opt_state = headwise_init(optimizer, params, labels, model.config,
                            alignment_rates(1e-3, "heads"))
  params, opt_state, loss = jax.jit(alignment_step(model, optimizer, view))(
      params, opt_state, batch, labels)

The head classes are an argument of the step, and the rates are optimizer state:
one compiled step serves every round's classification.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_attnalign.analysis.safety import HeadClass, require_safe_heads
from jax_attnalign.analysis.views import View, extract_view, resolve_view
from jax_attnalign.defense import checks
from jax_attnalign.defense.headwise import HeadRates, headwise_optimizer
from jax_attnalign.models import PATTERNS, attention_maps, run_with_hooks

Array = jax.Array
TRAINABLE = ("heads", "suspicious", "all_non_safe")


def alignment_loss(model, params, batch: dict[str, Array], labels: np.ndarray,
                   view: View | str, *, special_mask: Array | None = None,
                   prompt_lengths: Array | None = None) -> Array:
  """Mean over the batch of eq. 7's sum over suspicious heads (a scalar).

  batch: input_ids, attention_mask [B, T] (token_type_ids optional); labels:
  HeadClass per head [L, N], a NumPy array or a traced one. The safe mean is
  taken over every safe head of the viewed layers and held fixed. NumPy labels
  without a safe head raise EmptySafeSetError (traced ones give NaN: check them
  with `require_safe_heads` before the step, as `sanitize` does).

  Example, two suspicious heads of a tiny random BERT (2 layers x 4 heads):
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]]); mask = jnp.sign(ids)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> batch = {"input_ids": ids, "attention_mask": mask}
    >>> labels = np.array([[0, 1, 2, 2], [2, 0, 1, 2]])  # HeadClass per head [L, N]
    >>> loss = alignment_loss(model, params, batch, labels, "cls_row")
    >>> loss.shape, float(loss) > 0
    ((), True)
    >>> float(alignment_loss(model, params, batch, np.full((2, 4), 2), "cls_row"))  # all safe
    0.0
  """
  view = resolve_view(view)
  layers = np.asarray(view.layer_indices(model.config.num_layers))
  if isinstance(labels, np.ndarray):
    require_safe_heads(labels[layers])
  labels = jnp.asarray(labels)[layers]  # [L', N]
  safe = labels == HeadClass.SAFE
  suspicious = labels == HeadClass.SUSPICIOUS
  _, captured = run_with_hooks(model, params, batch, capture=PATTERNS)
  blocks, _ = extract_view(attention_maps(captured), view,
                           attention_mask=batch["attention_mask"],
                           special_mask=special_mask, prompt_lengths=prompt_lengths,
                           is_decoder=model.config.is_decoder)  # [L', B, N, F]
  weights = safe[:, None, :, None].astype(blocks.dtype)
  target = jnp.sum(blocks * weights, axis=(0, 2)) / jnp.sum(weights)  # [B, F], eq. 6
  target = jax.lax.stop_gradient(target)
  sq = jnp.sum((blocks - target[None, :, None, :]) ** 2, axis=-1)  # [L', B, N]
  per_example = jnp.sum(jnp.where(suspicious[:, None, :], sq, 0.0), axis=(0, 2))
  return jnp.mean(per_example)


def alignment_step(model, optimizer: optax.GradientTransformation, view: View | str):
  """fn(params, opt_state, batch, labels) -> (params, opt_state, loss): one
  optimizer step on eq. 7 (batch: model inputs plus special_mask / prompt_lengths
  when the view needs them; labels: HeadClass per head [L, N]). Not jitted:
  callers jit it (with their shardings or donation).

  Example, three steps on a tiny random BERT; the loss goes down:
    >>> from jax_attnalign import ModelConfig, build_model
    >>> from jax_attnalign.defense import headwise_init
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]]); mask = jnp.sign(ids)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> labels = np.array([[0, 1, 2, 2], [2, 0, 1, 2]])  # HeadClass per head [L, N]
    >>> optimizer = alignment_optimizer(params, trainable="suspicious")
    >>> opt_state = headwise_init(optimizer, params, labels, model.config,
    ...                           alignment_rates(1e-3, "suspicious"))
    >>> step, losses = jax.jit(alignment_step(model, optimizer, "cls_row")), []
    >>> for _ in range(3):
    ...   params, opt_state, loss = step(params, opt_state, {"input_ids": ids,
    ...                                  "attention_mask": mask}, jnp.asarray(labels))
    ...   losses.append(float(loss))
    >>> losses[0] > losses[1] > losses[2]
    True
  """

  def step(params, opt_state, batch, labels):
    loss, grads = jax.value_and_grad(
        lambda p: alignment_loss(model, p, batch, labels, view,
                                 special_mask=batch.get("special_mask"),
                                 prompt_lengths=batch.get("prompt_lengths")))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


Trainable = Literal["heads", "suspicious", "all_non_safe"]


def alignment_optimizer(params, *, trainable: Trainable = "heads"
                        ) -> optax.GradientTransformation:
  """The head-wise Adam of the alignment: on the non-safe heads ('heads',
  DESIGN.md's default), only the suspicious ones ('suspicious': every other head
  and parameter stays bitwise), or every non-safe parameter ('all_non_safe':
  attention's non-safe heads and everything outside attention). Its rates come
  from `headwise_init(..., alignment_rates(learning_rate, trainable))`; safe heads
  get exactly zero update.

  Example, a classifier and one layer's value kernel [D, N, H] of 4 heads:
    >>> from jax_attnalign import ModelConfig
    >>> from jax_attnalign.defense import headwise_init
    >>> params = {"classifier": {"kernel": jnp.zeros((16, 2))},
    ...           "layers_0": {"attention": {"value": {"kernel": jnp.zeros((16, 4, 4))}}}}
    >>> optimizer = alignment_optimizer(params)  # trainable="heads"
    >>> state = headwise_init(optimizer, params, np.array([[0, 1, 2, 2]]),
    ...                       ModelConfig.preset("tiny-bert", num_layers=1), alignment_rates(1e-3))
    >>> updates, _ = optimizer.update(jax.tree_util.tree_map(jnp.ones_like, params), state)
    >>> step = -updates["layers_0"]["attention"]["value"]["kernel"][0, :, 0]
    >>> [round(float(v) / 1e-3, 2) for v in step]  # in 1e-3: the safe heads' is 0
    [1.0, 1.0, 0.0, 0.0]
    >>> float(jnp.abs(updates["classifier"]["kernel"]).max())  # outside attention: frozen
    0.0
  """
  checks.choice("trainable", trainable, TRAINABLE)
  return headwise_optimizer(params,
                            other="moderate" if trainable == "all_non_safe" else "frozen")


def alignment_rates(learning_rate: float, trainable: Trainable = "heads") -> HeadRates:
  """The alignment's rate per head class: `learning_rate` for the suspicious heads
  (and the intermediate ones unless `trainable="suspicious"`), 0 for the safe.

  >>> alignment_rates(1e-3, "suspicious")
  HeadRates(suspicious=0.001, intermediate=0.0, safe=0.0)
  """
  checks.choice("trainable", trainable, TRAINABLE)
  intermediate = 0.0 if trainable == "suspicious" else learning_rate
  return HeadRates(suspicious=learning_rate, intermediate=intermediate, safe=0.0)
