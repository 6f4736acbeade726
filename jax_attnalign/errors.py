"""The errors of bad input: each names the argument or the file, the problem and the fix.

All are ValueError subclasses, so `except ValueError` still catches them.

>>> issubclass(InputError, ValueError), issubclass(CheckpointError, ValueError)
(True, True)
"""


class InputError(ValueError):
  """An argument of a public function (token ids, masks, scores, gates) is malformed."""


class NonFiniteError(InputError):
  """NaN or infinity where finite numbers are needed (scores, importance, weights)."""


class CheckpointError(ValueError):
  """A checkpoint file (config.json, safetensors, index, GGUF, orbax step) is malformed."""


class DataFileError(ValueError):
  """A data file (tsv, csv, jsonl, json) is empty, not a regular file, or malformed."""
