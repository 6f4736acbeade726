"""Gradient head importance (paper eq. 4, Michel et al. 2019) through per-head gates.

Every attention head's output H_lh [T, H] (the hook `layers.<l>.attn.z`) is
multiplied by a gate g_lh before the output projection (`scale_heads`); at g = 1,

  dL/dg_lh = sum_t <H_lh[t], dL/dH_lh[t]> = H_lh^T dL/dH_lh,

so one `jax.grad` with respect to the gates [L, N], `jax.vmap`ped over examples,
gives every head's term of eq. 4 for every example. G = E_x |.| (eq. 4).

Padding needs no special care: padded positions are never attended to and never
in the loss, so their contribution to the gate gradient is exactly zero.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from jax_attnalign import validation
from jax_attnalign.errors import InputError
from jax_attnalign.models import Hooks, apply_batch, scale_heads

Array = jax.Array
Normalization = Literal["global_max", "layer_l2", "none"]


def _example_loss(model, params, gates: Array, example: dict[str, Array],
                  use_predictions: bool) -> Array:
  """The loss of one example (arrays without a batch axis) under head gates [L, N]."""
  batch = {k: v[None] for k, v in example.items()}
  out = apply_batch(model, params, batch, hooks=Hooks(edit=scale_heads(gates)))
  logits = out.logits.astype(jnp.float32)
  if "loss_mask" in batch:  # causal LM: next-token loss on the masked (answer) tokens
    targets = batch["input_ids"][:, 1:]
    if use_predictions:
      targets = jax.lax.stop_gradient(jnp.argmax(logits[:, :-1], -1))
    weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], targets)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  labels = (jax.lax.stop_gradient(jnp.argmax(logits, -1)) if use_predictions
            else batch["labels"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)[0]


@functools.partial(jax.jit, static_argnames=("model", "use_predictions"))
def head_gate_gradients(model, params, batch: dict[str, Array], *,
                        use_predictions: bool = False) -> Array:
  """Per-example H^T dL/dH for every head: [B, L, N] (signed; eq. 4 before |.|).

  batch: input_ids, attention_mask [B, T] (token_type_ids optional) and either
  `labels` [B] (classification) or `loss_mask` [B, T] (causal LM; 1 on the
  answer tokens, whose own ids are the targets). With `use_predictions` the
  model's own predictions are the labels (the paper's label-free deployment):
  argmax class, or for causal LM the argmax next token at each answer position.
  For decoders' label-free setting feed the model's own greedy answer (see
  `self_labelled_answers`); teacher-forcing it makes both settings agree.

  Example, a tiny random BERT classifier (2 layers x 4 heads) and given labels:
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]]); mask = jnp.sign(ids)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> batch = {"input_ids": ids, "attention_mask": mask, "labels": jnp.array([0, 1])}
    >>> head_gate_gradients(model, params, batch).shape  # [B, L, N], signed
    (2, 2, 4)
  """
  cfg = model.config
  gates = jnp.ones((cfg.num_layers, cfg.num_heads), jnp.float32)
  grad = jax.grad(_example_loss, argnums=2)
  return jax.vmap(lambda ex: grad(model, params, gates, ex, use_predictions))(batch)


def normalize_importance(importance: Array, how: Normalization = "global_max") -> Array:
  """importance: [L, N] >= 0. 'global_max': divided by the largest head (eq. 5);
  'layer_l2': each layer divided by its L2 norm (Michel et al.); 'none'.

  >>> print(normalize_importance(jnp.array([[1.0, 2.0], [4.0, 0.0]])))
  [[0.25 0.5 ]
   [1.   0.  ]]
  >>> print(normalize_importance(jnp.array([[3.0, 4.0], [0.0, 2.0]]), "layer_l2"))
  [[0.6 0.8]
   [0.  1. ]]
  """
  if how == "global_max":
    return importance / jnp.maximum(jnp.max(importance), 1e-30)
  if how == "layer_l2":
    return importance / jnp.maximum(jnp.linalg.norm(importance, axis=-1, keepdims=True),
                                    1e-30)
  if how == "none":
    return importance
  raise ValueError(f"normalization must be global_max, layer_l2 or none, got {how!r}.")


def head_importance(model, params, batches, *, use_predictions: bool = False,
                    normalization: Normalization = "global_max") -> Array:
  """G[l, h] = E_x |H_lh^T dL/dH_lh| over all examples of `batches` (eq. 4): [L, N].

  batches: one batch dict or an iterable of them (see `head_gate_gradients`);
  examples with all-zero attention_mask rows (batch padding) are skipped.

  Example, label-free (the model's own predictions), a tiny random BERT:
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]]); mask = jnp.sign(ids)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> g = head_importance(model, params, {"input_ids": ids, "attention_mask": mask},
    ...                     use_predictions=True)
    >>> g.shape, round(float(g.max()), 6)  # [L, N] >= 0, the top head at 1 (eq. 5)
    ((2, 4), 1.0)
  """
  if isinstance(batches, dict):
    batches = [batches]
  total, count = 0.0, 0
  for i, batch in enumerate(batches):
    validation.batch_inputs(model.config, batch, where=f"head_importance: batch {i}")
    per_example = jnp.abs(head_gate_gradients(model, params, batch,
                                              use_predictions=use_predictions))
    real = jnp.any(batch["attention_mask"] > 0, axis=-1)
    total = total + jnp.sum(jnp.where(real[:, None, None], per_example, 0.0), axis=0)
    count += int(jnp.sum(real))
  if count == 0:
    raise InputError("head_importance: batches hold no example (no row with a 1 in "
                     "attention_mask); pass at least one encoded input.")
  validation.finite_values("head_importance: the mean |gate gradient| of layers", total,
                           fix="check the inputs' token ids and labels and the model's "
                               "weights (NaN weights spread to every head)")
  return normalize_importance(total / count, normalization)


def self_labelled_answers(model, params, prompt_ids: Array, prompt_mask: Array, *,
                          max_new_tokens: int) -> dict[str, Array]:
  """A causal-LM importance batch whose answers are the model's own greedy output.

  prompt_ids, prompt_mask: [B, Tp] left-padded. Returns input_ids,
  attention_mask and loss_mask [B, Tp + Tg]; loss_mask covers the generated
  tokens up to and including EOS (DESIGN.md: decoders' default labels).

  Example, a tiny random Llama's own answers to two prompts (one left-padded):
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-llama"))
    >>> ids = jnp.array([[0, 1, 5, 6], [1, 7, 8, 9]]); mask = jnp.sign(ids)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> batch = self_labelled_answers(model, params, ids, mask, max_new_tokens=3)
    >>> {k: v.shape for k, v in batch.items()}  # [B, Tp + Tg]
    {'input_ids': (2, 7), 'attention_mask': (2, 7), 'loss_mask': (2, 7)}
    >>> batch["loss_mask"][:, :4].tolist()  # the prompts are not scored
    [[0, 0, 0, 0], [0, 0, 0, 0]]
  """
  from jax_attnalign.models.generation import generate  # pylint: disable=g-import-not-at-top
  out = generate(model, params, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens)
  prompt_mask = jnp.asarray(prompt_mask, jnp.int32)
  return {"input_ids": jnp.concatenate([jnp.asarray(prompt_ids), out.tokens], axis=1),
          "attention_mask": jnp.concatenate([prompt_mask, out.token_mask], axis=1),
          "loss_mask": jnp.concatenate([jnp.zeros_like(prompt_mask), out.token_mask], axis=1)}
