"""HF checkpoints <-> our Flax params, through one naming and layout table.

`_RULES` names each of our modules' HF counterpart once; `_to_ours` / `_to_hf`
are the two halves of the one layout change (torch Linear weight [out, in] ->
kernel [in..., out...], heads split off as an axis). Both directions use them.

  model, params = load_pretrained("/path/to/hf_checkpoint")
  save_pretrained(model, params, "/path/to/out", tokenizer=tok)  # transformers loads it
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
import uuid
from typing import Any, Mapping, NamedTuple

from absl import logging
import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jax_attnalign.data.paths import find_gguf
from jax_attnalign.errors import CheckpointError
from jax_attnalign.models import gguf_io, safetensors_io
from jax_attnalign.models.config import ModelConfig

Params = dict[str, Any]
Path = tuple[str, ...]


class _Rule(NamedTuple):
  ours: str  # our module path; {i} is the layer index
  hf: str  # the HF module name; {base} is the backbone prefix ("bert.", "model." or "")
  n_in: int = 1  # leading kernel axes that are inputs (2 for the [N, H, D] out kernel)
  head: bool = False  # a task head: initialised fresh when the checkpoint lacks it


_BERT_RULES = (
    _Rule("embeddings/word_embeddings", "{base}embeddings.word_embeddings"),
    _Rule("embeddings/position_embeddings", "{base}embeddings.position_embeddings"),
    _Rule("embeddings/token_type_embeddings", "{base}embeddings.token_type_embeddings"),
    _Rule("embeddings/norm", "{base}embeddings.LayerNorm"),
    _Rule("layers_{i}/attention/query", "{base}encoder.layer.{i}.attention.self.query"),
    _Rule("layers_{i}/attention/key", "{base}encoder.layer.{i}.attention.self.key"),
    _Rule("layers_{i}/attention/value", "{base}encoder.layer.{i}.attention.self.value"),
    _Rule("layers_{i}/attention/out", "{base}encoder.layer.{i}.attention.output.dense", 2),
    _Rule("layers_{i}/attention_norm", "{base}encoder.layer.{i}.attention.output.LayerNorm"),
    _Rule("layers_{i}/mlp/intermediate", "{base}encoder.layer.{i}.intermediate.dense"),
    _Rule("layers_{i}/mlp/output", "{base}encoder.layer.{i}.output.dense"),
    _Rule("layers_{i}/output_norm", "{base}encoder.layer.{i}.output.LayerNorm"),
    _Rule("pooler", "{base}pooler.dense", head=True),
    _Rule("classifier", "classifier", head=True),
    _Rule("mlm/transform", "cls.predictions.transform.dense", head=True),
    _Rule("mlm/norm", "cls.predictions.transform.LayerNorm", head=True),
    _Rule("mlm", "cls.predictions", head=True),  # its own `bias` leaf
)
_LLAMA_RULES = (
    _Rule("embed_tokens", "{base}embed_tokens"),
    _Rule("layers_{i}/input_norm", "{base}layers.{i}.input_layernorm"),
    _Rule("layers_{i}/attention/query", "{base}layers.{i}.self_attn.q_proj"),
    _Rule("layers_{i}/attention/key", "{base}layers.{i}.self_attn.k_proj"),
    _Rule("layers_{i}/attention/value", "{base}layers.{i}.self_attn.v_proj"),
    _Rule("layers_{i}/attention/out", "{base}layers.{i}.self_attn.o_proj", 2),
    _Rule("layers_{i}/post_attention_norm", "{base}layers.{i}.post_attention_layernorm"),
    _Rule("layers_{i}/mlp/gate", "{base}layers.{i}.mlp.gate_proj"),
    _Rule("layers_{i}/mlp/up", "{base}layers.{i}.mlp.up_proj"),
    _Rule("layers_{i}/mlp/down", "{base}layers.{i}.mlp.down_proj"),
    _Rule("norm", "{base}norm"),
    _Rule("lm_head", "lm_head", head=True),
    _Rule("score", "score", head=True),
)
_RULES = {"bert": _BERT_RULES, "llama": _LLAMA_RULES, "mistral": _LLAMA_RULES}
_BASE_PREFIX = {"bert": "bert.", "llama": "model.", "mistral": "model."}
_LEAF_TO_HF = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}
_OLD_NAMES = {"weight": "gamma", "bias": "beta"}  # LayerNorm in old BERT checkpoints
_BUFFERS = re.compile(r"(^|.*\.)(position_ids|rotary_emb\.inv_freq|masked_bias)$")
# Heads of other tasks (pre-training's next-sentence head): dropped with a warning.
_OTHER_HEADS = {"bert": re.compile(r"cls\.seq_relationship\.(weight|bias)")}

_ARCH_FAMILY = {"bert": "Bert", "llama": "Llama", "mistral": "Mistral"}
_ARCH_TASK = {"base": "Model", "classification": "ForSequenceClassification",
              "masked_lm": "ForMaskedLM", "causal_lm": "ForCausalLM"}
_FAMILY_TASKS = {"bert": ("base", "classification", "masked_lm"),
                 "llama": ("base", "causal_lm", "classification"),
                 "mistral": ("base", "causal_lm", "classification")}


def _check_task(config: ModelConfig, task: str) -> None:
  if task not in _FAMILY_TASKS[config.model_type]:
    raise ValueError(f"Task {task!r} is not available for {config.model_type}; choose "
                     f"from {_FAMILY_TASKS[config.model_type]}.")


def infer_task(hf_config: Mapping[str, Any]) -> str:
  """Our task for a HF config, from its `architectures` ('BertForMaskedLM' -> 'masked_lm')."""
  model_type = hf_config.get("model_type")
  archs = hf_config.get("architectures") or []
  if not archs:
    return "base" if model_type == "bert" else "causal_lm"
  suffixes = {**{v: k for k, v in _ARCH_TASK.items()}, "ForPreTraining": "masked_lm"}
  for suffix, task in suffixes.items():
    if archs[0].endswith(suffix):
      return task
  raise ValueError(
      f"Architecture {archs[0]!r} has no counterpart here (supported heads: "
      f"{', '.join(suffixes)}); pass task= explicitly, e.g. task='base'.")


def architecture_name(config: ModelConfig, task: str) -> str:
  """The transformers class name, e.g. ('llama', 'causal_lm') -> 'LlamaForCausalLM'."""
  _check_task(config, task)
  return _ARCH_FAMILY[config.model_type] + _ARCH_TASK[task]


def _pattern(template: str) -> re.Pattern:
  return re.compile(r"(\d+)".join(re.escape(part) for part in template.split("{i}")))


def _hf_names(paths, config: ModelConfig, prefix: str) -> dict[Path, tuple[str, _Rule]]:
  """The HF tensor name and rule of each of our parameter paths."""
  rules = [(_pattern(r.ours), r) for r in _RULES[config.model_type]]
  names = {}
  for path in paths:
    module, leaf = "/".join(path[:-1]), path[-1]
    for pattern, rule in rules:
      match = pattern.fullmatch(module)
      if match and leaf in _LEAF_TO_HF:
        hf = rule.hf.replace("{base}", prefix).replace("{i}", "".join(match.groups()))
        names[path] = (f"{hf}.{_LEAF_TO_HF[leaf]}", rule)
        break
    else:
      raise ValueError(f"Parameter {'/'.join(path)} has no HF name; add a rule to "
                       "_RULES in jax_attnalign/models/hf_io.py.")
  return names


def _hf_shape(shape: tuple[int, ...], leaf: str, n_in: int) -> tuple[int, ...]:
  if leaf == "kernel":  # torch Linear weight: [out, in]
    return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))
  return tuple(shape) if leaf == "embedding" else (math.prod(shape),)


def _to_ours(x: np.ndarray, leaf: str, shape: tuple[int, ...], dtype) -> np.ndarray:
  """HF layout -> ours (one fresh C-contiguous copy, never a view of the file)."""
  if leaf == "kernel":
    return x.T.astype(dtype, order="C").reshape(shape)  # [in, out] -> [in..., out...]
  return x.astype(dtype).reshape(shape)


def _to_hf(x: np.ndarray, leaf: str, n_in: int) -> np.ndarray:
  """Ours -> HF layout; the inverse of `_to_ours`."""
  if leaf == "kernel":
    return np.ascontiguousarray(x.reshape(math.prod(x.shape[:n_in]), -1).T)
  return x if leaf == "embedding" else x.reshape(-1)


def _tied(config: ModelConfig, prefix: str) -> dict[str, str]:
  """HF tensors that duplicate another one (tied weights): name -> the original."""
  if config.model_type == "bert":
    return {"cls.predictions.decoder.weight": f"{prefix}embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias"}
  if config.tie_word_embeddings:
    return {"lm_head.weight": f"{prefix}embed_tokens.weight"}
  return {}


def hf_to_params(state: Mapping[str, np.ndarray], config: ModelConfig, task: str,
                 expected: Params) -> tuple[Params, list[str]]:
  """Converts a HF state dict to our params.

  Args:
    state: HF tensors by name, with or without the backbone prefix.
    config: the model's config.
    task: our task name (decides which heads HF names belong to the backbone).
    expected: our param tree of `jax.ShapeDtypeStruct` (e.g. `jax.eval_shape` of
      `model.init`): every leaf is converted to its shape, dtype and sharding.

  Returns:
    (params, newly_initialized): params without the task heads that `state`
    lacks entirely, and those heads' paths ('classifier/kernel', ...) for the
    caller to initialise. Heads of other tasks and tied duplicates are dropped.

  Raises:
    ValueError listing missing backbone tensors, mis-shaped tensors and
    unexpected tensors.
  """
  _check_task(config, task)
  prefix = _BASE_PREFIX[config.model_type]
  prefix = prefix if any(k.startswith(prefix) for k in state) else ""
  flat = traverse_util.flatten_dict(flax.core.unfreeze(expected))
  names = _hf_names(flat, config, prefix)

  def lookup(hf: str) -> str | None:
    module, leaf = hf.rsplit(".", 1)
    return next((n for n in (hf, f"{module}.{_OLD_NAMES[leaf]}") if n in state), None)

  found = {path: lookup(hf) for path, (hf, _) in names.items()}
  present_heads = {p[0] for p, name in found.items() if name and names[p][1].head}
  new, missing, misshaped, not_float = [], [], [], []
  for path, struct in flat.items():
    hf, rule = names[path]
    if found[path] is None:
      if rule.head and path[0] not in present_heads:
        new.append("/".join(path))
      else:
        missing.append(hf)
      continue
    shape, want = state[found[path]].shape, _hf_shape(struct.shape, path[-1], rule.n_in)
    if tuple(shape) != want:
      misshaped.append(f"{found[path]}: found {tuple(shape)}, expected {want}")
    if not jnp.issubdtype(state[found[path]].dtype, jnp.floating):
      not_float.append(f"{found[path]} ({state[found[path]].dtype})")

  consumed = {name for name in found.values() if name}
  heads = [_pattern(r.hf.replace("{base}", prefix))
           for r in _RULES[config.model_type] if r.head]
  other = _OTHER_HEADS.get(config.model_type)
  tied = _tied(config, prefix)
  unexpected, dropped = [], []
  for name in sorted(set(state) - consumed):
    if _BUFFERS.fullmatch(name):
      continue
    if name in tied and tied[name] in state:
      if not np.array_equal(state[name], state[tied[name]]):
        raise ValueError(f"{name} should be tied to {tied[name]} but differs from it; "
                         "untied heads are not supported.")
    elif (any(p.fullmatch(name.rsplit(".", 1)[0]) for p in heads)
          or (other is not None and other.fullmatch(name))):
      dropped.append(name)
    else:
      unexpected.append(name)
  if missing or misshaped or unexpected or not_float:
    parts = [f"The checkpoint does not fit a {config.model_type} model with task {task!r}."]
    if missing:
      parts.append("Missing tensors: " + ", ".join(missing) + ".")
    if misshaped:
      parts.append("Mis-shaped tensors: " + "; ".join(misshaped) + ". Does config.json "
                   "(sizes, heads, head_dim, num_labels) match the weights?")
    if unexpected:
      parts.append("Unexpected tensors: " + ", ".join(unexpected) + ".")
    if not_float:
      parts.append("Integer or boolean tensors where weights are floats: "
                   + ", ".join(not_float) + ".")
    raise ValueError("\n".join(parts))
  if dropped:
    logging.warning("Dropping tensors of heads that task %r does not use: %s", task,
                    ", ".join(dropped))
  params = {}
  for path, struct in flat.items():  # converted only once all names and shapes fit
    if found[path] is not None:
      value = _to_ours(np.asarray(state[found[path]]), path[-1], struct.shape,
                       struct.dtype)
      sharding = getattr(struct, "sharding", None)
      params[path] = (jax.device_put(value, sharding) if sharding is not None
                      else jnp.asarray(value))
  return traverse_util.unflatten_dict(params), new


def params_to_hf(params: Params, config: ModelConfig, task: str) -> dict[str, np.ndarray]:
  """Our params -> the HF state dict of `architecture_name(config, task)` (host arrays)."""
  _check_task(config, task)
  prefix = "" if task == "base" else _BASE_PREFIX[config.model_type]
  flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
  names = _hf_names(flat, config, prefix)
  return {names[path][0]: _to_hf(np.asarray(x), path[-1], names[path][1].n_in)
          for path, x in flat.items()}


_HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.txt"]


def resolve_checkpoint(path_or_id: str | os.PathLike) -> str:
  """A local checkpoint directory as is; a hub id ("org/name") downloaded to the cache."""
  path = os.fspath(path_or_id)
  if os.path.exists(path) or not re.fullmatch(r"[\w.-]+/[\w.-]+", path):
    return path
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  try:
    return huggingface_hub.snapshot_download(path, allow_patterns=_HUB_FILES)
  except Exception as e:  # offline, unknown repo, gated model, ...
    raise FileNotFoundError(
        f"{path!r} is not a local directory and could not be fetched from the "
        f"Hugging Face hub ({type(e).__name__}: {e}). Pass the path of a local "
        "checkpoint directory (config.json + *.safetensors).") from e


def load_pretrained(path: str | os.PathLike, *, task: str | None = None,
                    num_labels: int | None = None, dtype=jnp.float32, param_dtype=None,
                    allow_pickle: bool = False, seed: int = 0):
  """Loads a HF checkpoint directory (config.json + safetensors) or a GGUF file as (model, params).

  Args:
    path: the checkpoint directory; a llama/mistral `.gguf` file, or a directory
      holding one and no config.json (dequantised to `param_dtype`, see
      `gguf_io`); or a Hugging Face hub id ("org/name"), which is downloaded
      (config, safetensors, tokenizer files) when the hub is reachable.
    task: 'base', 'classification', 'masked_lm' (BERT) or 'causal_lm' (decoders);
      default from config.json's `architectures`.
    num_labels: overrides the config's label count (a classifier of another size
      must then be absent from the checkpoint, and is initialised fresh).
    dtype: the compute dtype.
    param_dtype: the parameter dtype; None means `dtype`.
    allow_pickle: read `pytorch_model.bin`-style checkpoints with
      `torch.load(weights_only=True)`.
    seed: for the heads the checkpoint lacks, initialised like `model.init`.

  Example, the MiniLM bundled with the package (`assets`):
    >>> from jax_attnalign.assets import bundled_minilm_path
    >>> model, params = load_pretrained(bundled_minilm_path())
    >>> model.task, model.config.num_layers, model.config.num_heads
    ('base', 6, 12)
  """
  # Lazy: jax_attnalign.models may come to re-export this module.
  from jax_attnalign.models import build_model  # pylint: disable=g-import-not-at-top
  path = resolve_checkpoint(path)
  _check_not_interrupted(pathlib.Path(path))
  gguf_file = find_gguf(path)
  if gguf_file is not None:
    hf_config, state = gguf_io.read_gguf(gguf_file)
  else:
    hf_config = safetensors_io.read_config_json(path)
    state = safetensors_io.read_checkpoint_dir(path, allow_pickle=allow_pickle)
  source = gguf_file or os.path.join(path, "config.json")
  config, task = read_architecture(hf_config, source, task)
  if num_labels is not None and num_labels != config.num_labels:
    config = config.replace(num_labels=num_labels, id2label=())
  param_dtype = dtype if param_dtype is None else param_dtype
  model = build_model(config, task, dtype=dtype, param_dtype=param_dtype)
  init = _init_fn(model, seed)
  try:
    params, new = hf_to_params(state, config, task, jax.eval_shape(init))
  except ValueError as e:
    raise CheckpointError(f"{path}: {e}") from e
  del state  # closes the memory maps
  _report_nonfinite(params, path)
  if new:
    logging.warning("Newly initialised (not in the checkpoint at %s): %s. Train them "
                    "before use.", path, ", ".join(new))
    paths = [tuple(p.split("/")) for p in new]
    # Under jit, XLA drops the initialisers of every parameter not returned.
    fresh = jax.jit(lambda: {p: traverse_util.flatten_dict(init())[p] for p in paths})()
    params = traverse_util.unflatten_dict({**traverse_util.flatten_dict(params), **fresh})
  return model, params


def read_architecture(hf_config: Mapping[str, Any], source, task: str | None = None
                      ) -> tuple[ModelConfig, str]:
  """(ModelConfig, task) of a HF config dict read from `source` (config.json or a
  GGUF file); every malformed field raises CheckpointError naming `source`."""
  try:
    config = ModelConfig.from_hf_config(hf_config)
    task = task or infer_task(hf_config)
  except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
    raise CheckpointError(f"{source}: {e} Fix the file, or convert the checkpoint "
                          "again.") from e
  _check_task(config, task)
  return config, task


def _report_nonfinite(params: Params, path) -> None:
  """Logs the parameters holding NaN or infinity: every output of the model will."""
  flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
  broken = ["/".join(p) for p, x in flat.items() if not bool(jnp.all(jnp.isfinite(x)))]
  if broken:
    logging.warning("%s holds non-finite weights (NaN or infinity) in %s: the model's "
                    "outputs and the detector's scores will be NaN (and flagged). The "
                    "checkpoint is corrupt or hostile.", path, ", ".join(broken))


def _check_not_interrupted(path: pathlib.Path) -> None:
  """A missing checkpoint whose previous version a killed `save_pretrained` left
  beside it: says where it is rather than only that the folder is missing."""
  if path.exists():
    return
  previous = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
  if previous:
    raise FileNotFoundError(
        f"{path} does not exist, but a save into it was interrupted while swapping "
        f"folders: the previous checkpoint is {previous[-1]}. Rename it to {path}.")


def expected_params(model) -> Params:
  """The param tree `model` has, as `jax.ShapeDtypeStruct`s (nothing is allocated)."""
  return jax.eval_shape(_init_fn(model, 0))


def _init_fn(model, seed: int):
  return lambda: model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"]


def check_params(model, params: Params) -> None:
  """Raises ValueError unless `params` holds exactly the float leaves, of the
  shapes, that `model` (its config and task) has."""
  want = traverse_util.flatten_dict(flax.core.unfreeze(expected_params(model)))
  got = traverse_util.flatten_dict(flax.core.unfreeze(params))
  name = "/".join
  problems = []
  for label, paths in (("missing", want.keys() - got.keys()),
                       ("unexpected", got.keys() - want.keys())):
    if paths:
      problems.append(f"{label}: {', '.join(sorted(map(name, paths)))}")
  misshaped = [f"{name(p)} {tuple(np.shape(got[p]))} (expected {want[p].shape})"
               for p in sorted(want.keys() & got.keys())
               if tuple(np.shape(got[p])) != want[p].shape]
  not_float = [f"{name(p)} ({jnp.result_type(got[p])})" for p in sorted(want.keys() & got.keys())
               if not jnp.issubdtype(jnp.result_type(got[p]), jnp.floating)]
  problems += [f"{label}: {'; '.join(rows)}" for label, rows in
               (("mis-shaped", misshaped), ("not floating point", not_float)) if rows]
  if problems:
    config = model.config
    raise ValueError(
        f"The parameters do not fit this {config.model_type} model (task {model.task!r}, "
        f"{config.num_layers} layers x {config.num_heads} heads, vocabulary "
        f"{config.vocab_size}). " + ". ".join(problems) + ". Pass the params that "
        "go with this model, or build the model from the config they were trained with.")


def save_pretrained(model, params: Params, out_dir: str | os.PathLike, *,
                    tokenizer=None, max_shard_bytes: int | None = None) -> None:
  """Writes a checkpoint folder that transformers loads: config.json, safetensors
  weights and, given `tokenizer`, its files (tokenizer.json, chat template, ...).

  The weights keep the dtype of `params`; `max_shard_bytes` splits them into
  shards with an index. Nothing is written unless `params` fits `model`
  (`check_params`) and `tokenizer` fits its vocabulary. The checkpoint is
  written into a new folder beside `out_dir` and renamed into place only when
  complete: an earlier checkpoint in `out_dir` is replaced whole, and survives
  any failure. An `out_dir` that holds files but no config.json is refused, so
  a wrong path never deletes other files.

  Without a tokenizer the folder has none, and `AutoTokenizer.from_pretrained`
  on it fails or builds an empty one: pass the tokenizer of the checkpoint the
  model came from (`data.load_tokenizer(path)`).

  Example, a round trip of a tiny random BERT classifier:
    >>> import tempfile
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> params = model.init(jax.random.key(0), jnp.ones((2, 6), jnp.int32))["params"]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   save_pretrained(model, params, tmp)
    ...   files = sorted(os.listdir(tmp))
    ...   loaded_model, loaded = load_pretrained(tmp)
    >>> files, loaded_model.task
    (['config.json', 'model.safetensors'], 'classification')
    >>> bool(jnp.array_equal(loaded["classifier"]["kernel"], params["classifier"]["kernel"]))
    True
  """
  out_dir = pathlib.Path(out_dir)
  check_params(model, params)
  config, task = model.config, model.task
  if tokenizer is None:
    logging.warning("save_pretrained(%s) without tokenizer=: the folder gets no "
                    "tokenizer files.", out_dir)
  elif len(tokenizer) > config.vocab_size:
    raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary "
                     f"has {config.vocab_size} rows; pass the tokenizer of this model.")
  if (out_dir.exists() and not (out_dir / "config.json").is_file()
      and (not out_dir.is_dir() or any(out_dir.iterdir()))):
    raise FileExistsError(f"{out_dir} exists and is not a checkpoint folder (no "
                          "config.json); pass a new or empty folder.")
  hf_config = config.to_hf_config(architecture_name(config, task))
  tensors = params_to_hf(params, config, task)
  hf_config["dtype"] = str(np.dtype(next(iter(tensors.values())).dtype))
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # left by a killed save
    shutil.rmtree(stale, ignore_errors=True)
  staging = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    safetensors_io.write_checkpoint_dir(staging, tensors, max_shard_bytes)
    with open(staging / "config.json", "w") as f:
      json.dump(hf_config, f, indent=2, sort_keys=True)
    if tokenizer is not None:
      tokenizer.save_pretrained(staging)
    _swap_in(staging, out_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _swap_in(new: pathlib.Path, out_dir: pathlib.Path) -> None:
  """Renames the complete folder `new` to `out_dir`, replacing what was there."""
  if not out_dir.exists():
    os.rename(new, out_dir)
    return
  old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
  os.rename(out_dir, old)
  try:
    os.rename(new, out_dir)
  except BaseException:
    os.rename(old, out_dir)
    raise
  shutil.rmtree(old)
