"""What the two pruning baselines share: pruning as zeroed weights, and pruning in steps.

  params = zero_units(params, keep_units)   # keep_units: [L, F], 0 = pruned
  params = zero_heads(params, keep_heads)   # keep_heads: [L, N], 0 = pruned
  pruned, trace = prune_in_steps(groups, accuracy_of, floor, size, backtrack=False)

A pruned feed-forward unit has its input column(s), bias and output row zeroed;
a pruned head its output-projection slice and, where it owns its value head (no
grouped-query sharing), its value slice. The checkpoint saved after pruning
therefore behaves in transformers as it does here, and with the activation at 0
being 0 (GELU, ReLU, SiLU) a zeroed unit gets exactly zero gradient, so it stays
pruned through fine-tuning (a pruned head is frozen by its rate instead).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jax_attnalign import parallel
from jax_attnalign.defense.scoring import model_fields, per_input
from jax_attnalign.models import apply_batch

Array = jax.Array
_UNIT_INPUTS = ("intermediate", "gate", "up")  # BERT; Llama's SwiGLU
_UNIT_OUTPUTS = ("output", "down")


def _with_layers(params: dict, num_layers: int, edit: Callable[[int, dict], dict]) -> dict:
  return {**params, **{f"layers_{l}": edit(l, params[f"layers_{l}"])
                       for l in range(num_layers)}}


def zero_units(params: dict, keep: Array) -> dict:
  """params with feed-forward unit f of layer l zeroed where keep[l, f] == 0.

  >>> params = {"layers_0": {"mlp": {"intermediate": {"kernel": jnp.ones((2, 3)),
  ...                                                 "bias": jnp.ones(3)},
  ...                                "output": {"kernel": jnp.ones((3, 2))}}}}
  >>> out = zero_units(params, jnp.array([[1.0, 0.0, 1.0]]))["layers_0"]["mlp"]
  >>> out["intermediate"]["kernel"][0].tolist(), out["output"]["kernel"][:, 0].tolist()
  ([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])
  """
  keep = jnp.asarray(keep)

  def scaled(name: str, dense: dict, k: Array) -> dict:
    if name in _UNIT_INPUTS:  # kernel [D, F], bias [F]: the unit is the last axis
      return {p: v * k.astype(v.dtype) for p, v in dense.items()}
    if name in _UNIT_OUTPUTS:  # kernel [F, D]; the bias [D] belongs to no unit
      return {**dense, "kernel": dense["kernel"] * k[:, None].astype(dense["kernel"].dtype)}
    return dense

  def edit(layer, tree):
    return {**tree, "mlp": {name: scaled(name, dense, keep[layer])
                            for name, dense in tree["mlp"].items()}}

  return _with_layers(params, keep.shape[0], edit)


def zero_heads(params: dict, keep: Array) -> dict:
  """params with head n of layer l zeroed where keep[l, n] == 0: its slice of the
  output projection (and of the value projection when it has its own value head).

  >>> params = {"layers_0": {"attention": {"out": {"kernel": jnp.ones((2, 1, 3))},
  ...     "value": {"kernel": jnp.ones((3, 2, 1)), "bias": jnp.ones((2, 1))}}}}
  >>> out = zero_heads(params, jnp.array([[0.0, 1.0]]))["layers_0"]["attention"]
  >>> out["out"]["kernel"][:, 0, 0].tolist(), out["value"]["bias"][:, 0].tolist()
  ([0.0, 1.0], [0.0, 1.0])
  """
  keep = jnp.asarray(keep)

  def edit(layer, tree):
    attn, k = dict(tree["attention"]), keep[layer]
    attn["out"] = {**attn["out"], "kernel": attn["out"]["kernel"]
                   * k[:, None, None].astype(attn["out"]["kernel"].dtype)}
    value = attn["value"]
    if value["kernel"].shape[1] == k.shape[0]:  # one value head per query head
      attn["value"] = {p: v * (k[None, :, None] if p == "kernel" else k[:, None]).astype(v.dtype)
                       for p, v in value.items()}
    return {**tree, "attention": attn}

  return _with_layers(params, keep.shape[0], edit)


def per_row(fn: Callable, model, params, arrays: dict[str, np.ndarray],
            batch_size: int, *, bucket: int | None = 16) -> np.ndarray:
  """fn(model, params, batch) -> per-row values (a jitted function), over the rows
  of `arrays` in data-parallel chunks (`per_input`, bucket as there): [n, ...]."""
  return per_input(lambda batch: fn(model, params, batch), model_fields(arrays), batch_size,
                   parallel.data_mesh(), bucket=bucket)


def as_lists(pruned: np.ndarray) -> list[list[int]]:
  """[L, X] bool -> per layer the pruned indices (the JSON form of a decision)."""
  return [np.flatnonzero(row).tolist() for row in pruned]


def keep_mask(pruned: list[list[int]], width: int) -> np.ndarray:
  """Per layer the pruned indices -> [L, width] float32, 0 where pruned."""
  keep = np.ones((len(pruned), width), np.float32)
  for layer, indices in enumerate(pruned):
    keep[layer, indices] = 0.0
  return keep


@functools.partial(jax.jit, static_argnames=("model",))
def _pruned_hits(model, params, batch, keep_units, keep_heads):
  params = zero_heads(zero_units(params, keep_units), keep_heads)
  return apply_batch(model, params, batch).logits.argmax(-1) == batch["labels"]


def pruned_accuracy(model, params, arrays: dict[str, np.ndarray], *,
                    keep_units: np.ndarray | None = None, keep_heads: np.ndarray | None = None,
                    batch_size: int = 32) -> float:
  """Accuracy on the labelled rows of `arrays` with the units and heads where
  keep_* is 0 zeroed (None: all kept); one compiled forward for every mask."""
  cfg = model.config
  keep_units = np.ones((cfg.num_layers, cfg.intermediate_size), np.float32) if (
      keep_units is None) else np.asarray(keep_units, np.float32)
  keep_heads = np.ones((cfg.num_layers, cfg.num_heads), np.float32) if (
      keep_heads is None) else np.asarray(keep_heads, np.float32)
  hits = per_row(lambda m, p, b: _pruned_hits(m, p, b, keep_units, keep_heads), model, params,
                 arrays, batch_size)
  return float(np.mean(hits))


def prune_in_steps(groups: Sequence[Sequence[int]], accuracy_of: Callable[[np.ndarray], float],
                   floor: float, size: int, *, backtrack: bool
                   ) -> tuple[np.ndarray, list[dict]]:
  """Prunes `groups` of flat indices (< size) one step after another while
  accuracy_of(pruned mask [size] bool) >= floor.

  At the first step under the floor pruning stops: without `backtrack` the
  whole step is undone, so the last step within the floor is kept
  (Fine-Pruning); with it, the step's indices are restored one at a time from
  its end until the floor holds again (PURE's backtracking; its groups run in
  increasing variance, so the highest-variance head comes back first). Returns
  (pruned mask, trace: {'pruned': count, 'accuracy'} of every evaluation).

  >>> acc = lambda pruned: 0.9 - 0.1 * pruned[:3].sum()  # only indices 0-2 matter
  >>> pruned, trace = prune_in_steps([[4, 5], [0, 1], [2, 3]], acc, 0.75, 6,
  ...                                backtrack=True)
  >>> np.flatnonzero(pruned).tolist(), [t["pruned"] for t in trace]
  ([0, 4, 5], [2, 4, 3])
  """
  pruned = np.zeros(size, bool)
  trace = []

  def evaluate() -> float:  # one validation pass, logged: a step can take minutes
    trace.append({"pruned": int(pruned.sum()), "accuracy": accuracy_of(pruned)})
    logging.info("pruning: %d of %d pruned, accuracy %.4f (floor %.4f)", trace[-1]["pruned"],
                 size, trace[-1]["accuracy"], floor)
    return trace[-1]["accuracy"]

  for group in groups:
    group = list(group)
    pruned[group] = True
    if evaluate() >= floor:
      continue
    if not backtrack:
      pruned[group] = False
      return pruned, trace
    while group:
      pruned[group.pop()] = False
      if not group:
        break  # the state before this step, already within the floor (or nothing pruned)
      if evaluate() >= floor:
        break
    return pruned, trace
  return pruned, trace
