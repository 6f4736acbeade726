"""The two kinds of example every loader returns and every attack transforms."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TextExample:
  """A classification example. `poisoned` marks rows an attack changed."""
  text: str
  label: int
  poisoned: bool = False

  def replace(self, **changes) -> "TextExample":
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class InstructionExample:
  """An Alpaca-format record (instruction, optional input, response)."""
  instruction: str
  input: str
  output: str
  poisoned: bool = False

  def replace(self, **changes) -> "InstructionExample":
    return dataclasses.replace(self, **changes)
