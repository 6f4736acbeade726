"""Attention safety alignment (paper eq. 6-7): pull suspicious heads to the safe mean.

  L_align(x) = sum_{h suspicious} || A_h(x) - mean_{s safe} A_s(x) ||_F^2

over the viewed blocks of the maps (`analysis.views`). The safe mean is a fixed
target (gradients do not flow into it). Which parameters move is the optimizer's
business: `alignment_optimizer` trains the q/k/v/o slices of the non-safe heads
and freezes the safe heads and everything outside attention (DESIGN.md's
default); `trainable="all_non_safe"` also lets the parameters outside attention
move.
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
  HeadClass per head [L, N]. The safe mean is taken over every safe head of the
  viewed layers and held fixed. Raises EmptySafeSetError without safe heads.
  """
  view = resolve_view(view)
  layers = list(view.layer_indices(model.config.num_layers))
  labels = np.asarray(labels)[layers]  # [L', N]
  safe = jnp.asarray(require_safe_heads(labels))
  suspicious = jnp.asarray(labels == HeadClass.SUSPICIOUS)
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


def alignment_step(model, optimizer: optax.GradientTransformation, labels: np.ndarray,
                   view: View | str):
  """fn(params, opt_state, batch) -> (params, opt_state, loss): one optimizer step
  on eq. 7 (batch: model inputs plus special_mask / prompt_lengths when the view
  needs them). Not jitted: callers jit it (with their shardings or donation)."""

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(
        lambda p: alignment_loss(model, p, batch, labels, view,
                                 special_mask=batch.get("special_mask"),
                                 prompt_lengths=batch.get("prompt_lengths")))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def alignment_optimizer(params, labels: np.ndarray, config, *, learning_rate: float = 1e-4,
                        trainable: Literal["heads", "suspicious", "all_non_safe"] = "heads"
                        ) -> optax.GradientTransformation:
  """Adam at `learning_rate` on the non-safe heads ('heads', DESIGN.md's default),
  only the suspicious ones ('suspicious': every other head and parameter stays
  bitwise), or every non-safe parameter ('all_non_safe': attention's non-safe
  heads and everything outside attention). Safe heads get exactly zero update."""
  checks.choice("trainable", trainable, TRAINABLE)
  intermediate = 0.0 if trainable == "suspicious" else learning_rate
  rates = HeadRates(suspicious=learning_rate, intermediate=intermediate, safe=0.0)
  return headwise_optimizer(params, labels, config, rates=rates,
                            other="moderate" if trainable == "all_non_safe" else "frozen")
