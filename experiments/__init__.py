"""The experiment binaries (absl apps) and their configs.

Importing the package keeps other libraries' INFO lines (orbax's checkpoint
bookkeeping, jax's backend probing) out of the binaries' output; their warnings
and errors still show, and so does every line of jax_attnalign and the binaries.
"""

import logging as _std_logging
import pathlib as _pathlib

from absl import logging as _logging

_OURS = (str(_pathlib.Path(__file__).resolve().parents[1] / "jax_attnalign"),
         str(_pathlib.Path(__file__).resolve().parent))


class _OwnInfoOnly(_std_logging.Filter):

  def filter(self, record: _std_logging.LogRecord) -> bool:
    return record.levelno >= _std_logging.WARNING or record.pathname.startswith(_OURS)


_logging.get_absl_handler().addFilter(_OwnInfoOnly())
