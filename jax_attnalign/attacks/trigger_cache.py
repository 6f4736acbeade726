"""Generated trigger material cached as JSON, so a victim is rebuilt without regenerating.

  record = {"attack": "bgm", "dataset": "sst2", "model": ..., "seed": 0,
            "prompt": ..., "settings": {...}, "rewrites": {"a fine film .": "..."}}
  write_cache(path, record)
  read_cache(path, "bgm")["rewrites"]

A file holds one attack's material for one dataset: Cbat's `sentences` (a pool),
or BGMAttack's / NWS's `rewrites` (clean text -> triggered text, keyed by the
clean text so that any subset of a split can look its rows up). Beside the
material it records what made it: the generator model, the seed, the prompt,
the generation settings and the make_triggers command lines that wrote it.
`experiments/make_triggers.py` writes these files and adds missing rows to an
existing one.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

from jax_attnalign.data.files import write_json

FORMAT = "jax_attnalign.triggers/1"
MAKE_TRIGGERS = "python -m experiments.make_triggers"


def read_cache(path: str | os.PathLike, attack: str) -> dict[str, Any]:
  """The record in `path`, checked to be `attack`'s; a missing file says how to make it."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"{attack}: no trigger cache at {path}. Generate it with:\n  {MAKE_TRIGGERS} "
        f"--attack={attack} --dataset=<sst2|ag_news> --data_dir=<clean split folder> "
        f"--out={path}")
  record = json.loads(path.read_text(encoding="utf-8"))
  if record.get("format") != FORMAT or record.get("attack") != attack:
    raise ValueError(f"{path} is not a {attack} trigger cache (format "
                     f"{record.get('format')!r}, attack {record.get('attack')!r})")
  return record


def write_cache(path: str | os.PathLike, record: dict[str, Any]) -> None:
  """Writes `record` (with the format tag) to `path` atomically, keys sorted."""
  write_json(path, {**record, "format": FORMAT}, sort_keys=True, ensure_ascii=False)


def missing_rows_error(attack: str, path: str | os.PathLike, split: str,
                       rows: Sequence[int], texts: Sequence[str], needed: int,
                       record: dict[str, Any] | None, generate_flags: str) -> ValueError:
  """The error for `split` rows whose triggered text is not in the cache at `path`.

  rows / texts: the missing rows' ids and clean texts; needed: how many rows
  were asked for; generate_flags: the make_triggers flags that choose these rows.
  """
  dataset = record.get("dataset", "<dataset>") if record else "<dataset>"
  data_dir = record.get("data_dir", "<clean split folder>") if record else "<clean split folder>"
  shown = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
  return ValueError(
      f"{attack}: {len(rows)} of the {needed} {split} rows to trigger are not in the "
      f"trigger cache {path} (rows {shown}; the first: {texts[0]!r}). Add them with:\n"
      f"  {MAKE_TRIGGERS} --attack={attack} --dataset={dataset} --data_dir={data_dir} "
      f"--out={path} {generate_flags}\n(make_triggers keeps the rows a cache already has)")
