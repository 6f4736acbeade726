"""The interface every attack implements, and the registry of attacks by name.

  attack = make_attack("badnets", target=1, poison_rate=0.2, seed=0)
  train = attack.poison(train)             # same length and order, chosen rows triggered
  triggered = attack.triggered_test(test)  # non-target rows with the trigger, true labels

Row selection (all attacks): `poison` draws round(poison_rate * len(examples))
rows without replacement with `np.random.default_rng(seed)` among the rows the
attack calls eligible (`Poisoner.eligibility` says which), and raises a
ValueError when fewer rows are eligible. Per-row choices (trigger word,
position, ...) continue from the same generator, in row order, so one seed
fixes the whole poisoned set. `triggered_test` draws from a second stream,
`default_rng((seed, 1))`.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Generic, Sequence, TypeVar

import numpy as np

from jax_attnalign.data.types import InstructionExample, TextExample

Example = TypeVar("Example", TextExample, InstructionExample)
TRAIN, TEST = "train", "test"
_TEST_STREAM = 1


class Poisoner(abc.ABC, Generic[Example]):
  """A seeded data-poisoning attack with a target and a poison rate.

  Subclasses define `trigger` (the example with the trigger, target untouched),
  `is_target` and `relabel`; dirty-label attacks relabel every poisoned row to the
  target (rows already at the target stay as they are), clean-label ones restrict
  the eligible rows to the target class, so relabelling changes nothing.
  """
  name: ClassVar[str]
  eligibility: ClassVar[str] = "all rows (dirty-label)"

  def __init__(self, *, target: Any, poison_rate: float = 0.2, seed: int = 0):
    if not 0.0 <= poison_rate <= 1.0:
      raise ValueError(f"poison_rate must be in [0, 1], got {poison_rate}")
    self.target = target
    self.poison_rate = poison_rate
    self.seed = seed

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(target={self.target!r}, "
            f"poison_rate={self.poison_rate}, seed={self.seed})")

  @abc.abstractmethod
  def is_target(self, example: Example) -> bool:
    """Whether the example already shows the target (label or output)."""

  @abc.abstractmethod
  def relabel(self, example: Example) -> Example:
    """The example with the target label (or output)."""

  @abc.abstractmethod
  def trigger(self, example: Example, rng: np.random.Generator) -> Example | None:
    """The example with the trigger, label untouched; None if it cannot carry one."""

  def trigger_row(self, example: Example, rng: np.random.Generator, row: int,
                  split: str) -> Example | None:
    """`trigger` for row `row` of `split` (TRAIN or TEST); file-backed attacks use `row`."""
    del row, split
    return self.trigger(example, rng)

  def eligible_rows(self, examples: Sequence[Example], rows: np.ndarray) -> np.ndarray:
    """Positions in `examples` that may be poisoned (default: all)."""
    del rows
    return np.arange(len(examples))

  def num_poisoned(self, num_examples: int) -> int:
    return round(self.poison_rate * num_examples)

  def chosen_rows(self, examples: Sequence[Example],
                  rows: Sequence[int] | None = None) -> np.ndarray:
    """Positions in `examples` that `poison(examples, rows)` triggers, sorted."""
    return self._choose(examples, _row_ids(examples, rows), np.random.default_rng(self.seed))

  def poison(self, examples: Sequence[Example],
             rows: Sequence[int] | None = None) -> list[Example]:
    """A new list, same length and order: the chosen rows triggered, relabelled, `poisoned`.

    rows: each example's row id in the full split that row-aligned files
      (paraphrases, rewrites) refer to, for a subset of a split; default 0..n-1.
    """
    rows = _row_ids(examples, rows)
    rng = np.random.default_rng(self.seed)
    out = list(examples)
    for i in self._choose(examples, rows, rng):
      triggered = self.trigger_row(examples[i], rng, int(rows[i]), TRAIN)
      if triggered is None:
        raise ValueError(f"{self.name}: training row {rows[i]} cannot carry the trigger: "
                         f"{examples[i]!r}")
      out[i] = self.relabel(triggered).replace(poisoned=True)
    return out

  def triggered_test(self, examples: Sequence[Example]) -> list[Example]:
    """The non-target examples with the trigger, keeping their true label (or output).

    ASR is the fraction of these that the model maps to the target. Rows that
    cannot carry the trigger (`trigger` returns None) are left out.
    """
    rng = np.random.default_rng((self.seed, _TEST_STREAM))
    out = []
    for row, example in enumerate(e for e in examples if not self.is_target(e)):
      triggered = self.trigger_row(example, rng, row, TEST)
      if triggered is not None:
        out.append(triggered.replace(poisoned=True))
    return out

  def _choose(self, examples: Sequence[Example], rows: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    eligible = np.asarray(self.eligible_rows(examples, rows), dtype=np.int64)
    count = self.num_poisoned(len(examples))
    if count > len(eligible):
      raise ValueError(
          f"{self.name}: poison_rate {self.poison_rate} asks for {count} of "
          f"{len(examples)} rows, but only {len(eligible)} are eligible "
          f"({self.eligibility}); lower poison_rate to at most "
          f"{len(eligible) / max(len(examples), 1):.4f}")
    return np.sort(rng.choice(eligible, size=count, replace=False))


def _row_ids(examples: Sequence[Any], rows: Sequence[int] | None) -> np.ndarray:
  """`rows` as an int array checked against `examples` (default 0..n-1)."""
  if rows is None:
    return np.arange(len(examples))
  rows = np.asarray(rows, dtype=np.int64)
  if rows.shape != (len(examples),):
    raise ValueError(f"rows has shape {rows.shape}, expected ({len(examples)},)")
  return rows


def insert_phrases(text: str, phrases: Sequence[str], rng: np.random.Generator) -> str:
  """Each phrase inserted at its own uniformly drawn word gap of `text` (ends included).

  Gaps are drawn on the original words, so no phrase splits another; phrases
  drawn to the same gap keep their given order. Whitespace becomes single spaces.
  """
  words = text.split()
  gaps = rng.integers(len(words) + 1, size=len(phrases))
  for index in sorted(range(len(phrases)), key=lambda i: (-gaps[i], -i)):
    words.insert(int(gaps[index]), phrases[index])
  return " ".join(words)


ATTACKS: dict[str, type[Poisoner]] = {}

P = TypeVar("P", bound=type[Poisoner])


def register(cls: P) -> P:
  """Class decorator: adds an attack to ATTACKS under `cls.name`."""
  if cls.name in ATTACKS:
    raise ValueError(f"attack {cls.name!r} is already registered")
  ATTACKS[cls.name] = cls
  return cls


def make_attack(name: str, **kwargs) -> Poisoner:
  """The attack registered as `name` ('badnets', 'vpi', ...), built with `kwargs`."""
  if name not in ATTACKS:
    raise KeyError(f"unknown attack {name!r}; known: {sorted(ATTACKS)}")
  return ATTACKS[name](**kwargs)

