"""Reading and writing HF checkpoints as numpy arrays: safetensors (sharded too), bf16 included.

`safetensors.numpy` (0.8) has no BF16, so the format is implemented here: an
8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the raw little-endian buffer. Reading memory-maps the file,
so a 7B shard is not copied before the arrays are converted. BF16 and FP8 map to
the `ml_dtypes` numpy types that JAX uses.

Pickled checkpoints (`*.bin`, `*.pt`) run code when unpickled; they are read
only on request, and then only through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import stat
import struct
import uuid
from typing import Mapping

import ml_dtypes
import numpy as np

from jax_attnalign.errors import CheckpointError

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32,
    "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_, "C64": np.complex64,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 2**20


def _dtype_name(dtype: np.dtype) -> str:
  name = _NAMES.get(np.dtype(dtype).newbyteorder("="))
  if name is None:
    raise ValueError(f"dtype {dtype} cannot be stored in safetensors; "
                     f"supported: {sorted(_NAMES, key=str)}.")
  return name


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.safetensors` file into read-only numpy arrays backed by a memory map.

  Raises CheckpointError naming the file (and the tensor) for a truncated file,
  a header that is not the JSON object of the format, or inconsistent offsets.
  """
  size = regular_size(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise CheckpointError(f"{path} is not a safetensors file (shorter than 8 bytes).")
    (n,) = struct.unpack("<Q", raw)
    if n > min(_MAX_HEADER, size - 8):
      raise CheckpointError(f"{path} is not a safetensors file (header length {n} of a "
                            f"{size}-byte file); it is truncated or of another format.")
    header = _json_object(f.read(n), f"{path} (safetensors header)")
  header.pop("__metadata__", None)
  if size == 8 + n:  # no data bytes (no or only empty tensors): nothing to map
    buffer = np.zeros(0, np.uint8)
  else:
    # A plain ndarray view (not np.memmap) that keeps the map open while used.
    buffer = np.asarray(np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n))
  return {name: _tensor(path, name, info, buffer) for name, info in header.items()}


def _tensor(path, name: str, info, buffer: np.ndarray) -> np.ndarray:
  """One header entry {dtype, shape, data_offsets} as a view of the data buffer."""
  where = f"{path}: tensor {name!r}"
  if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
    raise CheckpointError(f"{where} must be described by dtype, shape and data_offsets, "
                          f"got {str(info)[:80]}; the header is corrupt.")
  if info["dtype"] not in _DTYPES:
    raise CheckpointError(f"{where} has unsupported dtype {str(info['dtype'])[:20]!r}; "
                          f"supported: {sorted(_DTYPES)}.")
  shape, offsets = info["shape"], info["data_offsets"]
  if not (_ints(shape) and _ints(offsets) and len(offsets) == 2):
    raise CheckpointError(f"{where} has shape {str(shape)[:40]} and data_offsets "
                          f"{str(offsets)[:40]}; both must be lists of integers >= 0.")
  dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
  start, end = offsets
  if not start <= end <= buffer.size or end - start != math.prod(shape) * dtype.itemsize:
    raise CheckpointError(f"{where} has inconsistent offsets {offsets} for shape "
                          f"{tuple(shape)} {info['dtype']} (data: {buffer.size} bytes).")
  return buffer[start:end].view(dtype).reshape(shape)


def _ints(values) -> bool:
  return isinstance(values, list) and all(
      isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def regular_size(path) -> int:
  """The size of a regular file (a FIFO or device is refused before it blocks a read)."""
  mode = os.stat(path)
  if not stat.S_ISREG(mode.st_mode):
    raise CheckpointError(f"{path} is not a regular file; pass a checkpoint file.")
  return mode.st_size


def _json_object(data: bytes, where: str) -> dict:
  """`data` parsed as a JSON object; CheckpointError naming `where` otherwise."""
  try:
    value = json.loads(data.decode("utf-8"))
  except (UnicodeDecodeError, ValueError, RecursionError) as e:
    raise CheckpointError(f"{where} is not valid JSON ({type(e).__name__}: "
                          f"{str(e)[:120]}); the file is corrupt or truncated.") from e
  if not isinstance(value, dict):
    raise CheckpointError(f"{where} must hold a JSON object, found "
                          f"{type(value).__name__}.")
  return value


def read_json_file(path: str | os.PathLike) -> dict:
  """A checkpoint's JSON file (config.json, an index) as a dict, or CheckpointError."""
  if regular_size(path) > _MAX_HEADER:
    raise CheckpointError(f"{path} is larger than {_MAX_HEADER} bytes; not a config.")
  with open(path, "rb") as f:
    return _json_object(f.read(), str(path))


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes `tensors` to `path` (in place; `write_checkpoint_dir` is the atomic writer).

  The metadata always carries {"format": "pt"}, which transformers requires.
  """
  header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
  arrays, offset = [], 0
  for name, value in tensors.items():
    array = np.asarray(value)
    dtype_name = _dtype_name(array.dtype)
    array = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)
    header[name] = {"dtype": dtype_name, "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    arrays.append(array)
    offset += array.nbytes
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)  # the buffer starts 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for array in arrays:
      f.write(array.reshape(-1).view(np.uint8).data)
    f.flush()
    os.fsync(f.fileno())  # on disk before write_checkpoint_dir renames it into place


def _listing(path: str) -> str:
  names = sorted(os.listdir(path))
  return ", ".join(names) if names else "(empty)"


def read_config_json(path: str | os.PathLike) -> dict:
  """The `config.json` of a checkpoint directory, with a clear error if there is none."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Checkpoint directory {path} does not exist.")
  config = os.path.join(path, "config.json")
  if not os.path.isfile(config):
    raise FileNotFoundError(
        f"No config.json in {path}; a HF checkpoint directory needs one. Found: "
        f"{_listing(path)}.")
  return read_json_file(config)


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  tensor = tensor.detach().cpu()
  exotic = {torch.bfloat16: (torch.int16, ml_dtypes.bfloat16),
            torch.float8_e4m3fn: (torch.int8, ml_dtypes.float8_e4m3fn),
            torch.float8_e5m2: (torch.int8, ml_dtypes.float8_e5m2)}
  if tensor.dtype in exotic:  # numpy has no such dtype: reinterpret the bits
    int_dtype, np_dtype = exotic[tensor.dtype]
    return tensor.contiguous().view(int_dtype).numpy().view(np_dtype)
  return tensor.numpy()


def read_pickle_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torch-pickled state dict with `torch.load(weights_only=True)` only."""
  import torch  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    try:
      state = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
      lines = str(e).splitlines() or [""]
      detail = next((l for l in lines if "Unpickler error" in l), lines[0]).strip()
      raise ValueError(
          f"{path} holds objects other than tensors; torch.load(weights_only=True) "
          f"refused to unpickle it, and jax_attnalign never unpickles arbitrary "
          f"objects ({detail}).") from e
  if isinstance(state, Mapping) and "state_dict" in state:
    state = state["state_dict"]
  if not isinstance(state, Mapping) or not all(
      isinstance(v, torch.Tensor) for v in state.values()):
    raise ValueError(f"{path} is not a flat state dict of tensors.")
  return {k: _torch_to_numpy(v) for k, v in state.items()}


def read_checkpoint_dir(path: str | os.PathLike,
                        allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """All weights of a HF checkpoint directory, by HF name.

  Reads `model.safetensors` or the shards listed in `model.safetensors.index.json`.
  Pickled weights (`pytorch_model.bin[.index.json]`, `*.bin`, `*.pt`) are read
  only with `allow_pickle=True`, and then with `torch.load(weights_only=True)`.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Checkpoint directory {path} does not exist.")
  join = lambda name: os.path.join(path, name)
  if os.path.isfile(join(SAFE_WEIGHTS)):
    return read_safetensors(join(SAFE_WEIGHTS))
  if os.path.isfile(join(SAFE_INDEX)):
    return _read_sharded(path, SAFE_INDEX, read_safetensors)
  names = sorted(os.listdir(path))
  if PICKLE_INDEX in names or PICKLE_WEIGHTS in names:
    pickles = [PICKLE_INDEX if PICKLE_INDEX in names else PICKLE_WEIGHTS]
  else:
    pickles = [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
  if not pickles:
    raise FileNotFoundError(
        f"No weights in {path}: expected {SAFE_WEIGHTS}, {SAFE_INDEX} or (with "
        f"allow_pickle=True) {PICKLE_WEIGHTS}. Found: {_listing(path)}.")
  if not allow_pickle:
    raise ValueError(
        f"{path} holds only pickled weights ({', '.join(pickles)}). Unpickling can "
        "run arbitrary code hidden in the file, which matters most for the untrusted, "
        "possibly backdoored checkpoints this library scans. Convert the checkpoint "
        "to safetensors, or pass allow_pickle=True to read it with "
        "torch.load(weights_only=True), which refuses non-tensor objects.")
  if pickles[0] == PICKLE_INDEX:
    return _read_sharded(path, PICKLE_INDEX, read_pickle_checkpoint)
  if len(pickles) > 1:
    raise ValueError(f"Several pickled weight files in {path} and no index: {pickles}.")
  return read_pickle_checkpoint(join(pickles[0]))


def _read_sharded(path: str, index_name: str, reader) -> dict[str, np.ndarray]:
  index_path = os.path.join(path, index_name)
  weight_map = read_json_file(index_path).get("weight_map")
  if not isinstance(weight_map, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
    raise CheckpointError(f"{index_path} needs a 'weight_map' object of tensor name -> "
                          "shard file name; the index is corrupt.")
  folder = os.path.realpath(path)
  tensors = {}
  for shard in sorted(set(weight_map.values())):
    shard_path = os.path.realpath(os.path.join(path, shard))
    if os.path.dirname(shard_path) != folder:
      raise CheckpointError(f"{index_path} lists the shard {shard!r}, which is outside "
                            f"the checkpoint folder {path}; shards must be files of the "
                            "folder itself. The index is corrupt or hostile.")
    if not os.path.isfile(shard_path):
      raise FileNotFoundError(f"{index_name} lists the shard {shard}, which is not in "
                              f"{path}. Found: {_listing(path)}.")
    tensors.update({k: v for k, v in reader(shard_path).items()
                    if weight_map.get(k) == shard})
  absent = sorted(set(weight_map) - set(tensors))
  if absent:
    raise CheckpointError(f"{index_path}: tensors listed but absent from their shards: "
                          f"{absent[:10]}.")
  return tensors


def _shards(tensors: Mapping[str, np.ndarray],
            max_shard_bytes: int | None) -> list[dict[str, np.ndarray]]:
  """Greedy split in order; a tensor larger than the limit gets a shard to itself."""
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, value in tensors.items():
    nbytes = np.asarray(value).nbytes
    if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = value
    size += nbytes
  return shards


def write_checkpoint_dir(out_dir: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                         max_shard_bytes: int | None = None) -> list[str]:
  """Writes `model.safetensors`, or shards plus `model.safetensors.index.json`.

  Every file is first written under a temporary name in `out_dir` and renamed at
  the end, so a failure never leaves a half-written checkpoint; weight files of
  an earlier checkpoint in `out_dir` that the new one does not use are removed.
  Returns the names of the files written.
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  shards = _shards(tensors, max_shard_bytes)
  n = len(shards)
  if n == 1:
    files = {SAFE_WEIGHTS: shards[0]}
  else:
    files = {f"model-{i + 1:05d}-of-{n:05d}.safetensors": s for i, s in enumerate(shards)}
  tag = uuid.uuid4().hex[:8]
  temporary = {name: os.path.join(out_dir, f".tmp-{tag}-{name}") for name in files}
  try:
    for name, shard in files.items():
      write_safetensors(temporary[name], shard)
    if n > 1:
      index = {"metadata": {"total_size": sum(np.asarray(v).nbytes
                                              for v in tensors.values())},
               "weight_map": {k: name for name, s in files.items() for k in s}}
      temporary[SAFE_INDEX] = os.path.join(out_dir, f".tmp-{tag}-{SAFE_INDEX}")
      with open(temporary[SAFE_INDEX], "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
  except BaseException:
    for tmp in temporary.values():
      if os.path.exists(tmp):
        os.remove(tmp)
    raise
  for name, tmp in temporary.items():  # the index last: readers then see whole shards
    os.replace(tmp, os.path.join(out_dir, name))
  for name in os.listdir(out_dir):  # weights of an earlier checkpoint would shadow ours
    stale = name == SAFE_WEIGHTS or name == SAFE_INDEX or (
        name.startswith("model-") and name.endswith(".safetensors"))
    if stale and name not in temporary:
      os.remove(os.path.join(out_dir, name))
  return list(temporary)
