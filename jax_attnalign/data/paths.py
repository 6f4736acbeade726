"""Paths: where the public datasets live (one data root, from a flag or
$JAX_ATTNALIGN_DATA), and which file of a checkpoint path is a GGUF file.

  data.resolve_data_path("sst2/clean")             # $JAX_ATTNALIGN_DATA/sst2/clean
  data.resolve_data_path("sst2/clean", root=dir)   # a binary's --data_root

A relative path is looked up under the data root first and then as given (a
user's own folder); an absolute path is used as is. Nothing defaults to a path
relative to the working directory.
"""

from __future__ import annotations

import os
import pathlib

DATA_ROOT_ENV = "JAX_ATTNALIGN_DATA"
GGUF_SUFFIX = ".gguf"


def data_root(root: str | os.PathLike | None = None) -> pathlib.Path | None:
  """`root`, else $JAX_ATTNALIGN_DATA, else None."""
  root = root or os.environ.get(DATA_ROOT_ENV)
  return pathlib.Path(root) if root else None


def resolve_data_path(path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                      missing_ok: bool = False) -> pathlib.Path | str:
  """The existing file or folder `path` names (see the module docstring).

  Raises FileNotFoundError naming the data root's flag and environment variable;
  with `missing_ok`, returns `path` unchanged instead (a dataset name or hub id
  that `load_classification` resolves).
  """
  path = pathlib.Path(path)
  base = data_root(root)
  candidates = [path] if path.is_absolute() else (
      ([base / path] if base is not None else []) + [path])
  for candidate in candidates:
    if candidate.exists():
      return candidate
  if missing_ok:
    return str(path)
  where = (f"under the data root {base} nor " if base is not None and not path.is_absolute()
           else "")
  raise FileNotFoundError(
      f"Data {str(path)!r} not found {where}as given. Pass the folder that holds the "
      f"public datasets (sst2/, ag_news/, backdoorllm/, alpaca/) with --data_root DIR or "
      f"set {DATA_ROOT_ENV}=DIR, or give the dataset's full path.")


def find_gguf(path: str | os.PathLike) -> pathlib.Path | None:
  """The GGUF file `path` names: the file itself, or the one `.gguf` file of a
  directory without config.json. None when `path` is no GGUF checkpoint (a HF
  checkpoint directory, or nothing at all)."""
  path = pathlib.Path(path)
  if path.is_file():
    return path if path.suffix.lower() == GGUF_SUFFIX else None
  if not path.is_dir() or (path / "config.json").is_file():
    return None
  found = sorted(p for p in path.iterdir() if p.suffix.lower() == GGUF_SUFFIX and p.is_file())
  if len(found) > 1:
    raise ValueError(f"{path} holds several GGUF files ({', '.join(p.name for p in found)}); "
                     "pass the path of the one to load.")
  return found[0] if found else None
