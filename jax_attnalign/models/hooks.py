"""Named intermediates: capture, edit or summarise any of them by name.

Every layer i of Bert and Llama exposes these hook points (TransformerLens'
hook_resid_pre, hook_q, ..., under penzai-like dotted names):

  layers.{i}.resid_pre     [B, T, D]     the residual stream entering the layer
  layers.{i}.attn.q        [B, T, N, H]  queries (after rotary for Llama)
  layers.{i}.attn.k        [B, T, K, H]  keys of these tokens (after rotary)
  layers.{i}.attn.v        [B, T, K, H]  values of these tokens
  layers.{i}.attn.pattern  [B, N, T, S]  attention probabilities (f32)
  layers.{i}.attn.z        [B, T, N, H]  each head's output before the output
                                         projection (H of the paper's eq. 4)
  layers.{i}.mlp.hidden    [B, T, F]     each feed-forward unit's activation, the
                                         input of the MLP's output projection
                                         (BERT: act(x W_in); Llama: act(x W_gate) * x W_up)
  layers.{i}.resid_post    [B, T, D]     the residual stream leaving the layer

(With a KV cache, S covers every cache slot while k and v are the new tokens'.)
A `Hooks` spec, passed to the model as `hooks=`, says what happens at each one:

  capture    names whose value is sown into the 'intermediates' collection;
             nothing else is kept, so one layer's maps cost one layer's memory
  edit       {filter: fn(value, name) -> value}: the value flowing on is replaced
             (scaled, patched, ablated); gradients flow through fn
  summarize  {filter: fn(value, name) -> summary}: the summary is sown under the
             name instead of the value, and the value dies inside the layer
  accumulate {filter: Accumulator}, attn.pattern only: the layer computes its
             attention a block of query rows at a time and sows a summary
             summed over the blocks, so not even one layer's [N, T, S] maps
             exist at once (memory linear in the sequence length)

A filter is an exact name or glob ('layers.*.attn.pattern'), a compiled regex
(full match), a predicate over names, or a list/tuple of these (any matches).

Example, a tiny random BERT (2 layers x 4 heads):
>>> from jax_attnalign import ModelConfig, build_model, run_with_hooks
>>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
>>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]]); mask = jnp.sign(ids)
>>> params = model.init(jax.random.key(0), ids)["params"]
>>> batch = {"input_ids": ids, "attention_mask": mask}
>>> out, captured = run_with_hooks(model, params, batch, capture="layers.1.attn.*")
>>> sorted(captured)  # doctest: +NORMALIZE_WHITESPACE
['layers.1.attn.k', 'layers.1.attn.pattern', 'layers.1.attn.q', 'layers.1.attn.v',
 'layers.1.attn.z']
>>> captured["layers.1.attn.pattern"].shape  # [B, N, T, S]
(2, 4, 6, 6)
>>> attention_maps(run_with_hooks(model, params, batch, capture=PATTERNS)[1]).shape
(2, 2, 4, 6, 6)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp

from jax_attnalign.errors import InputError

Array = jax.Array
Filter = Union[str, re.Pattern, Callable[[str], bool], list, tuple, None]
Rules = Union[Mapping, list, tuple, None]  # {filter: fn} or [(filter, fn), ...]

COLLECTION = "intermediates"
SITES = ("resid_pre", "attn.q", "attn.k", "attn.v", "attn.pattern", "attn.z", "mlp.hidden",
         "resid_post")
PATTERNS = "layers.*.attn.pattern"  # every layer's attention probabilities
_NAME = re.compile(r"layers\.(\d+)\.(.+)")


def hook_name(layer: int, site: str) -> str:
  """'layers.{layer}.{site}' for a site of SITES."""
  if site not in SITES:
    raise ValueError(f"Unknown hook site {site!r}; sites: {SITES}.")
  return f"layers.{layer}.{site}"


def layer_of(name: str) -> int:
  """The layer index in a hook name: layer_of('layers.3.attn.z') == 3."""
  match = _NAME.fullmatch(name)
  if match is None:
    raise ValueError(f"{name!r} is not a hook name layers.<i>.<site>.")
  return int(match.group(1))


def name_filter(spec: Filter) -> Callable[[str], bool]:
  """A predicate over hook names from a filter spec (see the module docstring)."""
  if spec is None:
    return lambda name: False
  if isinstance(spec, str):
    return lambda name: fnmatch.fnmatchcase(name, spec)
  if isinstance(spec, re.Pattern):
    return lambda name: spec.fullmatch(name) is not None
  if isinstance(spec, (list, tuple, set, frozenset)):
    parts = [name_filter(s) for s in spec]
    return lambda name: any(p(name) for p in parts)
  if callable(spec):
    return spec
  raise TypeError(f"A hook filter is a name, glob, regex, predicate or list of these; "
                  f"got {type(spec).__name__}.")


def _rules(spec: Rules) -> tuple:
  pairs = spec.items() if isinstance(spec, Mapping) else (spec or ())
  return tuple((name_filter(f), fn) for f, fn in pairs)


@dataclasses.dataclass(frozen=True, eq=False)
class Accumulator:
  """A summary of a layer's attention pattern built from blocks of its query rows.

  The layer computes attention for `rows` query slots at a time; for each block
  it adds up `block(pattern_rows, slots, name)` (pattern_rows: [B, N, R, S] f32,
  zero on rows past the sequence; slots: [R] int, the rows' query slots; any
  pytree of arrays) and sows `finish(total, name)` under the pattern's name.
  A sum over rows (a Gram matrix, a count, a histogram) fits; a statistic that
  needs every row at once does not.
  """
  block: Callable[[Array, Array, str], Any]
  finish: Callable[[Any, str], Any] = lambda total, name: total
  rows: int = 128

  def __post_init__(self):
    if not (isinstance(self.rows, int) and self.rows >= 1):
      raise ValueError(f"Accumulator.rows must be an int >= 1, got {self.rows!r}.")


@dataclasses.dataclass(frozen=True, eq=False)
class Hooks:
  """What to do at each named intermediate (see the module docstring).

  The model calls `hooks.scope('layers.3')` for layer 3 and, at each site,
  `value = hooks(module, 'attn.pattern', value)`; filters are resolved there, at
  trace time. Build it with filters:
  Hooks(capture=PATTERNS, edit={'layers.2.attn.z': fn}, summarize={...}).

  Example, each layer's attention entropy per head instead of its maps:
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]]); mask = jnp.sign(ids)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> entropy = lambda p, name: -jnp.sum(p * jnp.log(p + 1e-9), axis=-1)  # [B, N, T]
    >>> _, state = model.apply({"params": params}, ids, mask, mutable=["intermediates"],
    ...                        hooks=Hooks(summarize={PATTERNS: entropy}))
    >>> {name: value.shape for name, value in collect(state).items()}
    {'layers.0.attn.pattern': (2, 4, 6), 'layers.1.attn.pattern': (2, 4, 6)}
  """
  capture: Filter = None
  edit: Rules = None
  summarize: Rules = None
  accumulate: Rules = None
  prefix: str = ""

  def scope(self, prefix: str) -> Hooks:
    """The same hooks seen from inside `prefix` (names gain 'prefix.')."""
    return dataclasses.replace(self, prefix=f"{self.prefix}{prefix}.")

  def __call__(self, module, site: str, value: Any) -> Any:
    """Applies the edits matching this site's name, then sows its value (capture)
    or summary (summarize) in `module`; returns the value that flows on."""
    name = self.prefix + site
    if self.accumulator(site) is not None:
      raise ValueError(f"{name}: only attn.pattern can be accumulated over query blocks.")
    for match, fn in _rules(self.edit):
      if match(name):
        value = fn(value, name)
    captured = bool(name_filter(self.capture)(name))
    summaries = [fn for match, fn in _rules(self.summarize) if match(name)]
    if int(captured) + len(summaries) > 1:
      raise ValueError(f"{name} is matched by more than one capture/summarize rule.")
    if captured:
      module.sow(COLLECTION, name, value)
    elif summaries:
      summary = summaries[0](value, name)
      # The barrier makes the rest of the layer wait for the summary, so the value
      # (e.g. f32 maps) dies inside the layer; without it XLA:GPU deferred every
      # layer's summary to the end and held all L layers' maps (18 of 32 GiB at
      # 7B x 2k tokens).
      summary, value = jax.lax.optimization_barrier((summary, value))
      module.sow(COLLECTION, name, summary)
    return value


  def accumulator(self, site: str) -> Accumulator | None:
    """The Accumulator of this site's name, if one matches; it must then be the
    only rule there (captured or edited maps would have to exist whole)."""
    name = self.prefix + site
    found = [acc for match, acc in _rules(self.accumulate) if match(name)]
    if not found:
      return None
    others = (name_filter(self.capture)(name) or len(found) > 1
              or any(match(name) for match, _ in _rules(self.edit) + _rules(self.summarize)))
    if others:
      raise ValueError(f"{name} is accumulated over query blocks, so no other capture, "
                       "edit, summarize or accumulate rule may match it.")
    return found[0]

  def sow(self, module, site: str, value: Any) -> None:
    """Sows `value` under this site's name (an accumulated summary)."""
    module.sow(COLLECTION, self.prefix + site, value)


NO_HOOKS = Hooks()


def scale_heads(gates: Array) -> dict:
  """An `edit` multiplying head n of layer l's z by gates[..., l, n].

  gates: [L, N], or broadcastable to [B, T, L, N] (per example / position).
  Its gradient at gates = 1 is head importance (analysis.importance).

  Example, heads 0 and 2 of layer 1 switched off:
    >>> gates = jnp.ones((2, 4)).at[1, jnp.array([0, 2])].set(0.0)
    >>> edit = scale_heads(gates)  # pass as run_with_hooks(..., edit=edit)
    >>> z = jnp.ones((1, 3, 4, 8))  # layers.1.attn.z: [B, T, N, H]
    >>> edit["layers.*.attn.z"](z, "layers.1.attn.z")[0, 0, :, 0]
    Array([0., 1., 0., 1.], dtype=float32)
  """
  gates = jnp.asarray(gates)

  def scale(z, name):
    layer = layer_of(name)
    # Shapes are static, so this holds under jit too: out-of-range indexing would clip.
    if gates.ndim < 2 or gates.shape[-1] != z.shape[-2] or layer >= gates.shape[-2]:
      raise InputError(
          f"scale_heads: gates of shape {gates.shape} do not cover {name} (layer {layer}, "
          f"{z.shape[-2]} heads); pass gates of shape [num_layers, num_heads].")
    return z * gates[..., layer, :, None].astype(z.dtype)

  return {"layers.*.attn.z": scale}


def collect(variables: Mapping) -> dict[str, Any]:
  """{name: value} of everything sown by hooks, from the variables returned by
  `model.apply(..., hooks=..., mutable=['intermediates'])` (or that collection)."""
  found = {}

  def walk(tree: Mapping):
    for key, sub in tree.items():
      if isinstance(sub, Mapping):
        walk(sub)
      elif len(sub) != 1:
        raise ValueError(f"{key} was sown {len(sub)} times in one forward pass.")
      else:
        found[key] = sub[0]

  walk(variables.get(COLLECTION, variables))
  return found


def attention_maps(captured: Mapping[str, Array]) -> Array:
  """Stacks every layer's captured pattern: [L, B, N, T, S].

  Example:
    >>> from jax_attnalign import ModelConfig, build_model, run_with_hooks
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]]); mask = jnp.sign(ids)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> batch = {"input_ids": ids, "attention_mask": mask}
    >>> _, captured = run_with_hooks(model, params, batch, capture=PATTERNS)
    >>> maps = attention_maps(captured)  # [L, B, N, T, S]
    >>> maps.shape, bool(jnp.allclose(maps.sum(-1), 1.0))  # each row a distribution
    ((2, 2, 4, 6, 6), True)
  """
  found = {layer_of(name): value for name, value in captured.items()
           if _NAME.fullmatch(name) and name.endswith(".attn.pattern")}
  if not found:
    raise ValueError(f"No attention patterns captured: capture {PATTERNS!r}, e.g. "
                     f"run_with_hooks(..., capture=PATTERNS).")
  if sorted(found) != list(range(len(found))):
    raise ValueError(f"Captured attention is missing layers: found {sorted(found)}.")
  return jnp.stack([found[i] for i in range(len(found))])
