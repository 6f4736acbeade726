"""Opening data files defensively: a regular, non-empty file, decoded as UTF-8 line by
line so that a bad byte is reported with its file:line.

A FIFO, a device or a directory is refused before it is opened (opening a FIFO
blocks until someone writes to it).
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
from typing import Any, Callable, Iterator

import numpy as np

from jax_attnalign.errors import DataFileError


def regular_file(path: str | os.PathLike) -> pathlib.Path:
  """`path` after checking that it is a regular, non-empty file."""
  path = pathlib.Path(path)
  try:
    mode = os.stat(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"no such file: {path}") from e
  if not stat.S_ISREG(mode.st_mode):
    kind = "a directory" if stat.S_ISDIR(mode.st_mode) else "not a regular file (a FIFO, " \
        "socket or device)"
    raise DataFileError(f"{path} is {kind}; pass a data file (.tsv, .csv, .jsonl, .json).")
  if mode.st_size == 0:
    raise DataFileError(f"{path} is empty; it needs a header and at least one row.")
  return path


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
  """(line number from 1, line) of a UTF-8 file (a leading BOM dropped, CRLF -> LF)."""
  path = regular_file(path)
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
      except UnicodeDecodeError as e:
        raise DataFileError(f"{path}:{lineno}: byte {raw[e.start]:#04x} at column "
                            f"{e.start + 1} is not UTF-8; re-save the file as UTF-8.") from e
      yield lineno, line[:-2] + "\n" if line.endswith("\r\n") else line


def read_json(path: str | os.PathLike) -> Any:
  """The JSON value of a file; a syntax error names file:line."""
  text = "".join(line for _, line in text_lines(path))
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DataFileError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from e


def _replace(path: str | os.PathLike, write: Callable[[pathlib.Path], None]) -> None:
  """`write(tmp)` into a temporary file beside `path`, then `os.replace` onto it: a
  write stopped midway leaves the old file or none, never half of one that a resumed
  run would read. Parent folders are created."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  write(tmp)
  os.replace(tmp, path)


def write_json(path: str | os.PathLike, value: Any, **dumps: Any) -> None:
  """Writes `value` as JSON (UTF-8; `dumps` go to `json.dumps`, indent 1 unless
  given) to `path`, atomically (`_replace`)."""
  text = json.dumps(value, **{"indent": 1, **dumps})
  _replace(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_npz(path: str | os.PathLike, **arrays: Any) -> None:
  """Writes `arrays` as an uncompressed .npz to `path` (the name kept as given: no
  '.npz' appended), atomically (`_replace`)."""

  def write(tmp: pathlib.Path) -> None:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)

  _replace(path, write)


def json_line(line: str, where: str) -> Any:
  """One JSON Lines record; a syntax error names `where` (file:line)."""
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    raise DataFileError(f"{where}: not valid JSON ({e.msg}).") from e
