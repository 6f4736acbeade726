"""Head-wise learning rates: one optax transformation, per-head scales along the head axis.

With Adam the update of every weight is normalised element-wise, so scaling the
Adam direction by a per-head learning rate equals running one Adam per head at
its own rate. A rate of 0 gives exactly zero update (frozen heads stay bitwise).

Parameter groups, chosen by path (every parameter must match exactly one):
  heads:  layers_<l>/attention/{query,key,value}/{kernel,bias}, attention/out/kernel
          -> per-head rate of the head's class;
  other:  everything else (embeddings, norms, MLPs, output bias, task heads)
          -> the intermediate rate, or frozen (option `other="frozen"`).
Grouped-query attention: a key/value head shared by query heads of different
classes takes the most conservative (lowest) rate of its group (DESIGN.md); with
the paper's rates that is the most suspicious class's.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_attnalign.defense import checks
from jax_attnalign.models.config import ModelConfig

# Which axis of each attention leaf is the head axis.
_HEAD_AXIS = {("query", "kernel"): 1, ("key", "kernel"): 1, ("value", "kernel"): 1,
              ("query", "bias"): 0, ("key", "bias"): 0, ("value", "bias"): 0,
              ("out", "kernel"): 0}
_ATTENTION = re.compile(r"layers_(\d+)/attention/(query|key|value|out)/(kernel|bias)$")


@dataclasses.dataclass(frozen=True)
class HeadRates:
  """Learning rates per head class (paper defaults)."""
  suspicious: float = 5e-6
  intermediate: float = 1e-4
  safe: float = 2e-4

  def __post_init__(self):
    for name in ("suspicious", "intermediate", "safe"):
      checks.rate(f"HeadRates.{name}", getattr(self, name))

  def of(self, head_class: int) -> float:
    return (self.suspicious, self.intermediate, self.safe)[int(head_class)]


def head_group(path: str) -> tuple[int, str, str] | None:
  """(layer, projection, leaf) of a per-head attention parameter path, else None."""
  m = _ATTENTION.search(path)
  if m is None or (m.group(2), m.group(3)) not in _HEAD_AXIS:
    return None  # the output bias [D] belongs to no head
  return int(m.group(1)), m.group(2), m.group(3)


def head_rate_tree(params, labels: np.ndarray, config: ModelConfig, rates: HeadRates):
  """For the per-head leaves: arrays broadcastable to the leaf with each head's rate."""
  labels = np.asarray(labels)
  rate = np.vectorize(rates.of, otypes=[np.float32])
  groups = config.num_heads // config.num_kv_heads
  kv_rates = rate(labels).reshape(config.num_layers, config.num_kv_heads, groups).min(-1)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  out = {}
  for path, leaf in flat.items():
    group = head_group(path)
    if group is None:
      continue
    layer, proj, kind = group
    per_head = kv_rates[layer] if proj in ("key", "value") else rate(labels[layer])
    axis = _HEAD_AXIS[(proj, kind)]
    shape = [1] * leaf.ndim
    shape[axis] = per_head.shape[0]
    out[path] = jnp.asarray(per_head.reshape(shape))
  return out


def _scale_by_tree(scales: dict[str, jax.Array]) -> optax.GradientTransformation:
  """Multiplies each update leaf at a path of `scales` by -scale (a descent step).

  Leaves at other paths are the other group's, masked out by multi_transform
  (optax.MaskedNode), and pass through.
  """

  def update_fn(updates, state, params=None):
    del params
    flat = flax.traverse_util.flatten_dict(updates, sep="/")
    flat = {k: v * -scales[k].astype(v.dtype) if k in scales else v
            for k, v in flat.items()}
    return flax.traverse_util.unflatten_dict(flat, sep="/"), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def headwise_optimizer(params, labels: np.ndarray, config: ModelConfig, *,
                       rates: HeadRates = HeadRates(),
                       other: Literal["moderate", "frozen"] = "moderate",
                       b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                       weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam(W) with a learning rate per attention head, from head classes [L, N].

  Built on `optax.multi_transform` with groups 'heads' (per-head scales along
  the head axis) and 'other' (moderate rate, or `optax.set_to_zero` when
  frozen). Every parameter is assigned to exactly one group.
  """
  labels = np.asarray(labels)
  if labels.shape != (config.num_layers, config.num_heads):
    raise ValueError(f"labels must be [L, N] = {(config.num_layers, config.num_heads)}, "
                     f"got {labels.shape}.")
  if other not in ("moderate", "frozen"):
    raise ValueError(f"other must be 'moderate' or 'frozen', got {other!r}.")
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  assignment = {p: ("heads" if head_group(p) else "other") for p in flat}
  if not any(g == "heads" for g in assignment.values()):
    raise ValueError("No attention parameters found: is this a jax_attnalign model's params?")
  adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  decay = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  heads = optax.chain(adam, *decay, _scale_by_tree(
      head_rate_tree(params, labels, config, rates)))
  rest = (optax.set_to_zero() if other == "frozen" else
          optax.chain(adam, *decay, optax.scale(-rates.intermediate)))
  group_of = flax.traverse_util.unflatten_dict(assignment, sep="/")
  return optax.multi_transform({"heads": heads, "other": rest}, group_of)
