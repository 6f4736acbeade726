"""Checks of arguments at the public entry points, run on the host before anything compiles.

Field checks (`choice`, `at_least`, `in_range`, ...) validate config dataclasses
in `__post_init__`; array checks (`batch_inputs`, `model_inputs`,
`finite_values`) validate what reaches a forward pass or a decision. Values are
read only from concrete arrays: under `jax.jit` the shapes and dtypes are still
checked (at trace time, once), and `checked(fn)` turns out-of-range indexing
and NaNs inside jitted code into an InputError (the opt-in `checkify` mode).

>>> from jax_attnalign import ModelConfig
>>> config = ModelConfig.preset("tiny-bert")  # vocabulary of 64 tokens
>>> model_inputs(config, np.array([[1, 64]]), where="example")
Traceback (most recent call last):
...
jax_attnalign.errors.InputError: example: input_ids holds ids outside [0, 64) ... tokenizer.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jax_attnalign.errors import InputError, NonFiniteError

_ROW_FIELDS = ("special_mask", "loss_mask")  # [B, T] beside input_ids


def choice(field: str, value, allowed: tuple) -> None:
  if value not in allowed:
    raise ValueError(f"{field} must be one of {allowed}, got {value!r}.")


def at_least(field: str, value, low: int) -> None:
  """An integer (not a bool) >= low."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{field} must be an integer >= {low}, got {value!r}.")


def finite(field: str, value) -> None:
  if (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
      or not math.isfinite(value)):
    raise ValueError(f"{field} must be a finite number, got {value!r}.")


def rate(field: str, value) -> None:
  """A learning rate: finite and >= 0 (0 freezes)."""
  finite(field, value)
  if value < 0:
    raise ValueError(f"{field} must be a finite number >= 0, got {value!r}.")


def in_range(field: str, value, low: float, high: float, *, open_: bool = False) -> None:
  """low <= value <= high, or low < value < high with `open_`."""
  finite(field, value)
  inside = low < value < high if open_ else low <= value <= high
  if not inside:
    interval = f"({low}, {high})" if open_ else f"[{low}, {high}]"
    raise ValueError(f"{field} must lie in {interval}, got {value!r}.")


def _concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _dtype(x) -> np.dtype:
  return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _integer_array(name: str, x, ndim: int, *, allow_bool: bool = False) -> tuple:
  """x's shape, after checking it is an integer (or bool) array of `ndim` axes."""
  if x is None or isinstance(x, (str, bytes, Mapping)):
    raise InputError(f"{name} must be an integer array, got {type(x).__name__}.")
  shape, dtype = np.shape(x), _dtype(x)
  if len(shape) != ndim:
    raise InputError(f"{name} must have {ndim} axes ({'[B, T]' if ndim == 2 else '[B]'}), "
                     f"got shape {shape}; add the batch axis (x[None]) for one input.")
  if not (np.issubdtype(dtype, np.integer) or (allow_bool and dtype == np.bool_)):
    raise InputError(f"{name} must hold integers, got dtype {dtype}; token ids and masks "
                     "are int32 (np.asarray(x, np.int32) after checking they are whole).")
  return shape


def within(name: str, x, low: int, high: int, fix: str) -> None:
  """Every value of a concrete array in [low, high); tracers pass (see `checked`)."""
  if not _concrete(x) or np.size(x) == 0:
    return
  pair = (jnp.min(x), jnp.max(x)) if isinstance(x, jax.Array) else (np.min(x), np.max(x))
  lo, hi = (int(v) for v in jax.device_get(pair))
  if lo < low or hi >= high:
    host = np.asarray(x)
    first = tuple(int(i) for i in np.argwhere((host < low) | (host >= high))[0])
    raise InputError(f"{name} holds {'ids' if 'ids' in name else 'values'} outside "
                     f"[{low}, {high}) (min {lo}, max {hi}; first at {list(first)}); {fix}.")


def model_inputs(config, input_ids, attention_mask=None, token_type_ids=None, *,
                 where: str) -> None:
  """Checks a forward pass's inputs for a model of `config` (a ModelConfig).

  input_ids, attention_mask, token_type_ids: [B, T] integer (the mask may be
  bool), B, T >= 1, ids in [0, vocab_size), types in [0, type_vocab_size), the
  mask 0/1, and for encoders T <= max_position_embeddings (their position
  table; decoders' rotary positions have none). Raises InputError naming
  `where` and the argument.
  """
  shape = _integer_array(f"{where}: input_ids", input_ids, 2)
  if 0 in shape:
    raise InputError(f"{where}: input_ids is empty (shape {shape}); pass at least one "
                     "input of at least one token.")
  for name, x in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
    if x is not None and _integer_array(f"{where}: {name}", x, 2,
                                        allow_bool=name == "attention_mask") != shape:
      raise InputError(f"{where}: {name} has shape {np.shape(x)}, input_ids {shape}; "
                       "they must match (encode them together).")
  if token_type_ids is not None and config.is_decoder:
    raise InputError(f"{where}: token_type_ids given to a {config.model_type} decoder, "
                     "which has no token types; drop them.")
  if not config.is_decoder and shape[1] > config.max_position_embeddings:
    raise InputError(f"{where}: input_ids has {shape[1]} positions but the model's "
                     f"position table has {config.max_position_embeddings}; truncate "
                     f"(tokenizer max_length={config.max_position_embeddings}).")
  within(f"{where}: input_ids", input_ids, 0, config.vocab_size,
         "encode the text with this model's tokenizer")
  if attention_mask is not None:
    within(f"{where}: attention_mask", attention_mask, 0, 2, "the mask is 1 on tokens, "
           "0 on padding")
  if token_type_ids is not None:
    within(f"{where}: token_type_ids", token_type_ids, 0, config.type_vocab_size,
           f"the model has {config.type_vocab_size} token types")


def batch_inputs(config, batch: Mapping[str, Any], *, where: str) -> None:
  """`model_inputs` on a batch dict (input_ids, attention_mask, optional
  token_type_ids), and the per-row fields beside them: special_mask, loss_mask
  [B, T], labels (within the classes), prompt_lengths [B]."""
  if not isinstance(batch, Mapping):
    raise InputError(f"{where}: the inputs must be a dict of arrays (input_ids, "
                     f"attention_mask, ...), got {type(batch).__name__}.")
  missing = [k for k in ("input_ids", "attention_mask") if k not in batch]
  if missing:
    raise InputError(f"{where}: the inputs lack {', '.join(missing)} (found "
                     f"{sorted(batch)}); encode them with jax_attnalign.data.")
  model_inputs(config, batch["input_ids"], batch["attention_mask"],
               batch.get("token_type_ids"), where=where)
  shape = np.shape(batch["input_ids"])
  for name in _ROW_FIELDS:
    if name in batch and np.shape(batch[name]) != shape:
      raise InputError(f"{where}: {name} has shape {np.shape(batch[name])}, input_ids "
                       f"{shape}; they must match.")
  for name in ("labels", "prompt_lengths"):
    if name in batch and _integer_array(f"{where}: {name}", batch[name], 1) != shape[:1]:
      raise InputError(f"{where}: {name} has {np.shape(batch[name])[0]} rows, input_ids "
                       f"{shape[0]}; they must match.")
  if "labels" in batch and not config.is_decoder:
    within(f"{where}: labels", batch["labels"], 0, config.num_labels,
           f"the model has {config.num_labels} classes")
  if "prompt_lengths" in batch:
    within(f"{where}: prompt_lengths", batch["prompt_lengths"], 0, shape[1] + 1,
           "a prompt length counts slots of the row")


def finite_values(name: str, values, *, fix: str) -> np.ndarray:
  """`values` as a host array; raises NonFiniteError naming the rows (first axis)
  that hold NaN or infinity, so the caller can say where they came from."""
  values = np.asarray(jax.device_get(values))
  bad = ~np.isfinite(values)
  if bad.any():
    rows = np.flatnonzero(bad.reshape(len(values), -1).any(axis=1)) if values.ndim else [0]
    shown = ", ".join(map(str, rows[:8])) + (" ..." if len(rows) > 8 else "")
    raise NonFiniteError(f"{name} is not finite (NaN or infinity) at {len(rows)} of "
                         f"{max(len(values), 1)} rows ({shown}); {fix}.")
  return values


def checked(fn: Callable) -> Callable:
  """fn with checks inside jitted code (jax's checkify): an out-of-range index (a
  token id >= the vocabulary, a position past the table), a NaN produced or a
  division by zero raises InputError instead of giving NaN. Slower: opt in while
  debugging.

  >>> from jax_attnalign import ModelConfig, build_model
  >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
  >>> ids = jnp.array([[1, 5, 64]]); params = model.init(jax.random.key(0), ids)["params"]
  >>> forward = jax.jit(lambda p, i: model.apply({"params": p}, i).logits)
  >>> checked(forward)(params, ids)
  Traceback (most recent call last):
  ...
  jax_attnalign.errors.InputError: Inside jitted code: out-of-bounds indexing ...
  """
  errors = checkify.user_checks | checkify.index_checks | checkify.float_checks
  checkified = checkify.checkify(fn, errors=errors)

  @functools.wraps(fn)
  def run(*args, **kwargs):
    error, out = checkified(*args, **kwargs)
    message = error.get()
    if message is not None:
      raise InputError(
          f"Inside jitted code: {message.splitlines()[0]} Token ids must lie in "
          "[0, vocab_size) (negative ids are mapped past the end), token types in "
          "[0, type_vocab_size), lengths within the position table.")
    return out
  return run
