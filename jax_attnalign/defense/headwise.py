"""Head-wise learning rates: one optax transformation, per-head rates along the head axis.

  optimizer = headwise_optimizer(params)
  opt_state = headwise_init(optimizer, params, labels, model.config, HeadRates())

The rates are the optimizer state's (`LearningRates`), not constants of the
transformation, so one transformation and one compiled step serve every head
classification. With Adam the update of every weight is normalised element-wise,
so scaling the Adam direction by a per-head learning rate equals running one Adam
per head at its own rate. A rate of 0 gives exactly zero update (frozen heads stay
bitwise).

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
import functools
import re
from typing import Any, Literal, NamedTuple

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_attnalign import validation
from jax_attnalign.analysis import HeadClass
from jax_attnalign.defense import checks
from jax_attnalign.models.config import ModelConfig

# Which axis of each attention leaf is the head axis.
_HEAD_AXIS = {("query", "kernel"): 1, ("key", "kernel"): 1, ("value", "kernel"): 1,
              ("query", "bias"): 0, ("key", "bias"): 0, ("value", "bias"): 0,
              ("out", "kernel"): 0}
_ATTENTION = re.compile(r"layers_(\d+)/attention/(query|key|value|out)/(kernel|bias)$")


@dataclasses.dataclass(frozen=True)
class HeadRates:
  """Learning rates per head class (paper defaults).

  >>> from jax_attnalign.analysis import HeadClass
  >>> HeadRates().of(HeadClass.SAFE), HeadRates(suspicious=0.0).suspicious  # 0: frozen
  (0.0002, 0.0)
  """
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


def _rate_shape(path: str, leaf) -> tuple[int, ...]:
  """The shape of a leaf's learning rate: the head axis kept for per-head leaves, else ()."""
  group = head_group(path)
  if group is None:
    return ()
  shape = [1] * leaf.ndim
  axis = _HEAD_AXIS[group[1:]]
  shape[axis] = leaf.shape[axis]
  return tuple(shape)


def learning_rates(params, labels: np.ndarray, config: ModelConfig,
                   rates: HeadRates) -> dict[str, jax.Array]:
  """Every leaf's learning rate by path: for the per-head leaves an array
  broadcastable to the leaf with each head's rate, for the others
  `rates.intermediate` (a scalar). labels: HeadClass per head [L, N]."""
  labels = np.asarray(labels)
  if labels.shape != (config.num_layers, config.num_heads):
    raise ValueError(f"labels must be [L, N] = {(config.num_layers, config.num_heads)}, "
                     f"got {labels.shape}.")
  validation.within("learning_rates: labels", labels, 0, len(HeadClass),
                    "labels are HeadClass values (0 suspicious, 1 intermediate, 2 safe)")
  rate = np.vectorize(rates.of, otypes=[np.float32])
  groups = config.num_heads // config.num_kv_heads
  kv_rates = rate(labels).reshape(config.num_layers, config.num_kv_heads, groups).min(-1)
  out = {}
  for path, leaf in flax.traverse_util.flatten_dict(params, sep="/").items():
    group = head_group(path)
    if group is None:
      out[path] = jnp.asarray(rates.intermediate, jnp.float32)
      continue
    layer, proj, _ = group
    per_head = kv_rates[layer] if proj in ("key", "value") else rate(labels[layer])
    out[path] = jnp.asarray(per_head.reshape(_rate_shape(path, leaf)))
  return out


class LearningRates(NamedTuple):
  """The optimizer state's learning rate of each trained leaf, nested like the params."""
  learning_rates: Any


def _scale_by_learning_rates() -> optax.GradientTransformation:
  """Multiplies each update leaf by -(its rate in the state): a descent step.

  `init` sets every rate to 0; `headwise_init` puts real ones in. Leaves masked
  out by multi_transform (optax.MaskedNode) have no rate and pass through.
  """

  def init_fn(params):
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    return LearningRates(flax.traverse_util.unflatten_dict(
        {p: np.zeros(_rate_shape(p, leaf), np.float32) for p, leaf in flat.items()
         if not isinstance(leaf, optax.MaskedNode)}, sep="/"))

  def update_fn(updates, state, params=None):
    del params
    rates = flax.traverse_util.flatten_dict(state.learning_rates, sep="/")
    flat = flax.traverse_util.flatten_dict(updates, sep="/")
    flat = {k: v * -rates[k].astype(v.dtype) if k in rates else v for k, v in flat.items()}
    return flax.traverse_util.unflatten_dict(flat, sep="/"), state

  return optax.GradientTransformation(init_fn, update_fn)


def headwise_optimizer(params, *, other: Literal["moderate", "frozen"] = "moderate",
                       b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                       weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam(W) with a learning rate per attention head, the rates held in its state.

  Start from `headwise_init(optimizer, params, labels, config, rates)`: the
  transformation's own `init` leaves every rate 0 (nothing moves). The rates
  being state, not constants, one transformation serves every head
  classification; it is cached per parameter layout and settings, so a jitted
  step taking it as a static argument compiles once per shape across rounds,
  restarts and seeds. With `other="frozen"` the parameters outside the heads
  get `optax.set_to_zero` through `optax.multi_transform`.

  Example, the first step of a tiny random BERT with all gradients 1:
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> params = model.init(jax.random.key(0), jnp.ones((2, 6), jnp.int32))["params"]
    >>> labels = np.array([[0, 1, 2, 2], [2, 2, 2, 2]])  # HeadClass per head [L, N]
    >>> optimizer = headwise_optimizer(params)
    >>> state = headwise_init(optimizer, params, labels, model.config, HeadRates())
    >>> grads = jax.tree_util.tree_map(jnp.ones_like, params)
    >>> updates, _ = jax.jit(optimizer.update)(grads, state)
    >>> step = -updates["layers_0"]["attention"]["query"]["kernel"][0, :, 0]  # ~ the rate
    >>> [round(float(v) / 1e-4, 2) for v in step]  # in 1e-4: each head its class's rate
    [0.05, 1.0, 2.0, 2.0]
  """
  checks.choice("other", other, ("moderate", "frozen"))
  paths = tuple(sorted(flax.traverse_util.flatten_dict(params, sep="/")))
  if not any(head_group(p) for p in paths):
    raise ValueError("No attention parameters found: is this a jax_attnalign model's params?")
  return _headwise_transform(paths, other, b1, b2, eps, weight_decay)


@functools.lru_cache(maxsize=None)
def _headwise_transform(paths: tuple[str, ...], other: str, b1: float, b2: float, eps: float,
                        weight_decay: float) -> optax.GradientTransformation:
  decay = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  trained = optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), *decay,
                        _scale_by_learning_rates())
  if other == "moderate":
    return trained
  group_of = {p: ("heads" if head_group(p) else "frozen") for p in paths}
  return optax.multi_transform({"heads": trained, "frozen": optax.set_to_zero()},
                               flax.traverse_util.unflatten_dict(group_of, sep="/"))


def headwise_init(optimizer: optax.GradientTransformation, params, labels: np.ndarray,
                  config: ModelConfig, rates: HeadRates = HeadRates()) -> optax.OptState:
  """`optimizer.init(params)` (a `headwise_optimizer`) with the learning rates of
  the head classes `labels` [L, N] at `rates` (see `learning_rates`).

  Example, one layer's query kernel [D, N, H] of 4 heads:
    >>> params = {"layers_0": {"attention": {"query": {"kernel": jnp.zeros((16, 4, 4))}}}}
    >>> optimizer = headwise_optimizer(params)
    >>> config = ModelConfig.preset("tiny-bert", num_layers=1)
    >>> state = headwise_init(optimizer, params, np.array([[0, 1, 2, 2]]), config)
    >>> rates = optax.tree_utils.tree_get(state, "learning_rates")["layers_0"]["attention"]
    >>> [round(float(r) / 1e-4, 2) for r in rates["query"]["kernel"].ravel()]  # in 1e-4
    [0.05, 1.0, 2.0, 2.0]
  """
  state = optimizer.init(params)
  held = flax.traverse_util.flatten_dict(optax.tree_utils.tree_get(state, "learning_rates"),
                                         sep="/")
  every = learning_rates(params, labels, config, rates)
  return optax.tree_utils.tree_set(state, learning_rates=flax.traverse_util.unflatten_dict(
      {p: every[p] for p in held}, sep="/"))
