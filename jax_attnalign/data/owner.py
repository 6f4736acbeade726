"""The files a model owner brings to an audit (`jax_attnalign.audit`): the inputs
their deployed model received, and clean rows they trust.

  incoming = load_incoming("incoming.jsonl")  # list[str]
  clean = load_clean("clean.tsv")  # TextExamples (or InstructionExamples from Alpaca JSON)
"""

from __future__ import annotations

import csv
import json
import pathlib

from jax_attnalign.data.classification import load_classification
from jax_attnalign.data.instructions import load_instructions
from jax_attnalign.data.templates import prompt_text
from jax_attnalign.data.types import InstructionExample, TextExample


TEXT_FIELDS = ("text", "sentence", "instruction")


def _record_text(record, where: str) -> str:
  if isinstance(record, str):
    return record
  if isinstance(record, dict):
    if "instruction" in record:
      return prompt_text(InstructionExample(record["instruction"], record.get("input", ""), ""))
    for field in TEXT_FIELDS:
      if field in record:
        return str(record[field])
  raise ValueError(f"{where}: expected a string or a record with one of {TEXT_FIELDS}, "
                   f"got {str(record)[:80]!r}.")


def load_incoming(path: str | pathlib.Path) -> list[str]:
  """The incoming inputs of a file: JSON / JSONL (strings, or records with a
  'text', 'sentence' or 'instruction' (+ 'input') field), TSV / CSV with a
  'sentence' or 'text' column in its header, or plain text (one input per line)."""
  path = pathlib.Path(path)
  suffix = path.suffix.lower()
  if suffix in (".json", ".jsonl"):
    text = path.read_text(encoding="utf-8")
    records = (json.loads(text) if suffix == ".json"
               else [json.loads(line) for line in text.splitlines() if line.strip()])
    if not isinstance(records, list):
      raise ValueError(f"{path}: expected a JSON list of inputs.")
    return [_record_text(r, f"{path}: item {i}") for i, r in enumerate(records)]
  if suffix in (".tsv", ".csv"):
    with open(path, encoding="utf-8-sig", newline="") as f:
      rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    column = next((c for c in ("sentence", "text") if rows and c in rows[0]), None)
    if column is None:
      raise ValueError(f"{path}: no 'sentence' or 'text' column in its header.")
    return [r[column] for r in rows]
  return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_clean(path: str | pathlib.Path) -> list[TextExample] | list[InstructionExample]:
  """The owner's clean rows: Alpaca-format JSON records (instruction, input,
  output; for decoders), or labelled texts (TSV / CSV / JSON with text and label;
  for classifiers, see `data.load_classification`)."""
  path = pathlib.Path(path)
  if path.suffix.lower() == ".json":
    records = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(records, list) and records and isinstance(records[0], dict) and (
        "instruction" in records[0]):
      return load_instructions(path, poisoned=False)
  return load_classification(path)
