"""GGUF checkpoints (llama.cpp's format) in: the config from the metadata, the
tensors dequantised by the `gguf` package, both under Hugging Face's names.

  hf_config, state = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
  # `load_pretrained` takes the file (or a folder holding one) directly.

`state` maps HF tensor names to lazy tensors: each is dequantised to float32
(and llama.cpp's query/key row order undone) only when it is converted, so a
large file is never held dequantised as a whole. The conversion itself is the
one of HF checkpoints (`hf_io.hf_to_params`), so every name and shape check
there applies to GGUF files too.

llama.cpp stores Mistral v0.1 as architecture 'llama' without its sliding
window; such a file loads as the Llama it is run as by llama.cpp. A file whose
architecture is 'mistral' keeps the window its metadata gives.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

import numpy as np

from jax_attnalign.errors import CheckpointError
from jax_attnalign.models import safetensors_io

ARCHITECTURES = ("llama", "mistral")
_MAGIC = b"GGUF"

# GGUF tensor names (llama.cpp's convert_hf_to_gguf) -> HF module names.
_MODULES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "blk.{i}.attn_norm": "model.layers.{i}.input_layernorm",
    "blk.{i}.attn_q": "model.layers.{i}.self_attn.q_proj",
    "blk.{i}.attn_k": "model.layers.{i}.self_attn.k_proj",
    "blk.{i}.attn_v": "model.layers.{i}.self_attn.v_proj",
    "blk.{i}.attn_output": "model.layers.{i}.self_attn.o_proj",
    "blk.{i}.ffn_norm": "model.layers.{i}.post_attention_layernorm",
    "blk.{i}.ffn_gate": "model.layers.{i}.mlp.gate_proj",
    "blk.{i}.ffn_up": "model.layers.{i}.mlp.up_proj",
    "blk.{i}.ffn_down": "model.layers.{i}.mlp.down_proj",
}
_LAYER = re.compile(r"blk\.(\d+)\.(.+)")
# Keys under `<architecture>.` -> HF config keys. head_dim: see _hf_config.
_METADATA = {
    "block_count": "num_hidden_layers",
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
    "attention.sliding_window": "sliding_window",
}
_REQUIRED = ("block_count", "embedding_length", "feed_forward_length",
             "attention.head_count")
_TOKEN_IDS = {"bos_token_id": "tokenizer.ggml.bos_token_id",
              "eos_token_id": "tokenizer.ggml.eos_token_id",
              "pad_token_id": "tokenizer.ggml.padding_token_id"}


class _Tensor:
  """One tensor of the file with its HF shape; dequantised to float32 when read."""

  def __init__(self, tensor, row_groups: int | None, path: pathlib.Path):
    self._tensor = tensor
    self._path = path
    self._row_groups = row_groups  # heads of llama.cpp's q/k row permutation
    self.shape = tuple(int(d) for d in reversed(tensor.shape))  # ggml: innermost first
    self.dtype = np.dtype(np.float32)

  def __array__(self, dtype=None, copy=None):
    from gguf import quants  # pylint: disable=g-import-not-at-top

    try:
      x = quants.dequantize(self._tensor.data, self._tensor.tensor_type).reshape(self.shape)
      if self._row_groups:
        x = _unpermute_rows(x, self._row_groups)
    except ValueError as e:  # a shape in the tensor table that its data does not fill
      raise CheckpointError(f"{self._path}: tensor {self._tensor.name} does not fit its "
                            f"shape {self.shape} ({e}); the file is corrupt.") from e
    return x if dtype is None else x.astype(dtype)


def _unpermute_rows(x: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's rotary row order: per head it interleaves the two halves
  of the rows (transformers' rotate_half layout); here they are split again."""
  rows = x.shape[0] // heads // 2
  return x.reshape(heads, rows, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def _open(path: pathlib.Path):
  import gguf  # pylint: disable=g-import-not-at-top

  safetensors_io.regular_size(path)  # a FIFO would block the read below
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic != _MAGIC:
    raise CheckpointError(f"{path} is not a GGUF file: it starts with {magic!r}, not "
                          f"{_MAGIC!r}.")
  try:
    return gguf.GGUFReader(path, "r")
  except Exception as e:  # the reader's own errors name neither the file nor the cause
    raise CheckpointError(
        f"{path} ({os.path.getsize(path)} bytes) cannot be read as GGUF: the file is "
        f"truncated or corrupt ({type(e).__name__}: {e}). Download or convert it "
        "again.") from e


def _field(reader, key: str) -> Any:
  field = reader.fields.get(key)
  return None if field is None else field.contents()


def _check_types(path: pathlib.Path, reader) -> None:
  """Refuses tensors the `gguf` package cannot dequantise, or that are not floats."""
  from gguf import GGML_QUANT_SIZES, quants  # pylint: disable=g-import-not-at-top

  bad = {}
  for qtype in {t.tensor_type for t in reader.tensors}:
    block, size = GGML_QUANT_SIZES[qtype]
    try:
      probe = quants.dequantize(np.zeros((1, size), np.uint8), qtype)
      ok = probe.size == block and np.issubdtype(probe.dtype, np.floating)
    except NotImplementedError:
      ok = False
    if not ok:
      bad[qtype.name] = [t.name for t in reader.tensors if t.tensor_type == qtype]
  if bad:
    listed = "; ".join(f"{k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}"
                       for k, v in sorted(bad.items()))
    raise CheckpointError(
        f"{path} holds tensors that the gguf package cannot dequantise to floats "
        f"({listed}). Convert the model to a type it reads (F32, F16, BF16, Q8_0, "
        "Q4_0/1, Q5_0/1, Q*_K, ...) with llama.cpp's llama-quantize.")


def _hf_config(path: pathlib.Path, reader, arch: str, tied: bool) -> dict[str, Any]:
  missing = [f"{arch}.{k}" for k in _REQUIRED if f"{arch}.{k}" not in reader.fields]
  if missing:
    raise CheckpointError(f"{path}: the GGUF metadata lacks {', '.join(missing)}; the file is "
                     "incomplete or was not written by llama.cpp's converter.")
  hf: dict[str, Any] = {"model_type": arch,
                        "architectures": [arch.capitalize() + "ForCausalLM"],
                        "tie_word_embeddings": tied, "hidden_act": "silu"}
  for key, hf_key in _METADATA.items():
    value = _field(reader, f"{arch}.{key}")
    if value is not None:
      hf[hf_key] = value
  if "vocab_size" not in hf:
    hf["vocab_size"] = next(int(t.shape[1]) for t in reader.tensors
                            if t.name == "token_embd.weight")
  head_dim = _field(reader, f"{arch}.attention.key_length")
  rotary = _field(reader, f"{arch}.rope.dimension_count")
  hf["head_dim"] = head_dim or rotary or hf["hidden_size"] // hf["num_attention_heads"]
  if rotary is not None and rotary != hf["head_dim"]:
    raise CheckpointError(f"{path}: rotary embeddings over {rotary} of {hf['head_dim']} head "
                     "dimensions (partial rotary) are not supported.")
  scaling = _field(reader, f"{arch}.rope.scaling.type")
  if scaling not in (None, "none"):
    if scaling != "linear":
      raise CheckpointError(f"{path}: rope scaling {scaling!r} is not supported (only linear).")
    hf["rope_scaling"] = {"rope_type": "linear",
                          "factor": _field(reader, f"{arch}.rope.scaling.factor")}
  for hf_key, key in _TOKEN_IDS.items():
    value = _field(reader, key)
    if value is not None:
      hf[hf_key] = int(value)
  return hf


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, _Tensor]]:
  """(HF config dict, HF-named lazy tensors) of a llama/mistral GGUF file.

  Raises ValueError naming the file for a file that is not GGUF, truncated or
  corrupt, of another architecture, with tensors the `gguf` package cannot
  dequantise, or with tensors that have no HF counterpart.
  """
  path = pathlib.Path(path)
  reader = _open(path)
  try:
    return _read(path, reader)
  except CheckpointError:
    raise
  except Exception as e:  # metadata of the wrong type or size deep in the gguf package
    raise CheckpointError(f"{path}: malformed GGUF metadata or tensor table "
                          f"({type(e).__name__}: {str(e)[:200]}). Download or convert the "
                          "file again.") from e


def _read(path: pathlib.Path, reader) -> tuple[dict[str, Any], dict[str, _Tensor]]:
  arch = _field(reader, "general.architecture")
  if arch not in ARCHITECTURES:
    raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported; "
                     f"jax_attnalign reads {', '.join(ARCHITECTURES)} GGUF files.")
  _check_types(path, reader)
  names = {t.name for t in reader.tensors}
  hf_config = _hf_config(path, reader, arch, tied="output.weight" not in names)
  permuted = {"blk.{i}.attn_q": hf_config["num_attention_heads"],
              "blk.{i}.attn_k": hf_config.get("num_key_value_heads",
                                              hf_config["num_attention_heads"])}
  state, unknown = {}, []
  for tensor in reader.tensors:
    module, _, leaf = tensor.name.rpartition(".")
    layer = _LAYER.fullmatch(module)
    key = f"blk.{{i}}.{layer[2]}" if layer else module
    if key not in _MODULES or leaf not in ("weight", "bias"):
      unknown.append(tensor.name)
      continue
    hf = _MODULES[key].replace("{i}", layer[1] if layer else "")
    state[f"{hf}.{leaf}"] = _Tensor(tensor, permuted.get(key), path)
  if unknown:
    raise CheckpointError(f"{path}: tensors with no counterpart in a {arch} model: "
                     f"{', '.join(unknown)} (e.g. llama-3 rope_freqs are not supported).")
  return hf_config, state
