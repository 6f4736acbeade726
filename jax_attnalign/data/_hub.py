"""Hugging Face hub access through `datasets`, with one clear error when offline."""

from __future__ import annotations

import pathlib

LOCAL_SUFFIXES = (".tsv", ".csv", ".json", ".jsonl")


class HubUnreachableError(ConnectionError):
  """A name that is not a local path could not be loaded from the hub."""


def looks_like_path(name: str) -> bool:
  """True for names no hub id has: absolute, ./ or ~ prefixed, nested, or a data file."""
  path = pathlib.Path(name)
  return (path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
          or path.suffix in LOCAL_SUFFIXES)


def require_local(name: str) -> None:
  """Fails fast on a missing local path instead of asking the hub for it."""
  if looks_like_path(name) and not pathlib.Path(name).expanduser().exists():
    raise FileNotFoundError(
        f"no such file or directory: {name} (a relative path is also looked up under "
        "the data root: --data_root DIR or $JAX_ATTNALIGN_DATA)")


def load_hub_split(hub_id: str, split: str):
  """`datasets.load_dataset(hub_id, split=split)`; any network or lookup failure
  becomes a HubUnreachableError that tells the user to pass a local path."""
  import datasets  # pylint: disable=g-import-not-at-top  # slow; only the hub path needs it

  try:
    return datasets.load_dataset(hub_id, split=split)
  except OSError as e:  # ConnectionError, hub lookups and offline mode are OSErrors
    raise HubUnreachableError(
        f"{hub_id!r} is not a local path, and loading it from the Hugging Face hub "
        f"failed ({type(e).__name__}: {e}). The hub is unreachable or does not have "
        "it: pass a local path to a data file or directory instead, or the data root "
        "that holds it (--data_root DIR or $JAX_ATTNALIGN_DATA, e.g. with sst2/clean "
        "inside).") from e
