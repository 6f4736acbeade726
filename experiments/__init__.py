"""The experiment binaries (absl apps) and their configs.

Every binary takes --data_root (default $JAX_ATTNALIGN_DATA), the folder of the
public datasets, and calls `use_data_root()` first in its main.

Importing the package keeps other libraries' INFO lines (orbax's checkpoint
bookkeeping, jax's backend probing) out of the binaries' output; their warnings
and errors still show, and so does every line of jax_attnalign and the binaries.
"""

import logging as _std_logging
import os as _os
import pathlib as _pathlib

from absl import flags as _flags
from absl import logging as _logging

from jax_attnalign import data as _data

_OURS = (str(_pathlib.Path(__file__).resolve().parents[1] / "jax_attnalign"),
         str(_pathlib.Path(__file__).resolve().parent))


class _OwnInfoOnly(_std_logging.Filter):

  def filter(self, record: _std_logging.LogRecord) -> bool:
    return record.levelno >= _std_logging.WARNING or record.pathname.startswith(_OURS)


_logging.get_absl_handler().addFilter(_OwnInfoOnly())

_flags.DEFINE_string("data_root", None,
                     "Folder holding the public datasets (sst2/, ag_news/, backdoorllm/, "
                     f"alpaca/); default ${_data.DATA_ROOT_ENV}. Relative data paths are "
                     "looked up under it first.")


def use_data_root() -> None:
  """Makes --data_root, when given, the data root of this process (and its library calls)."""
  if _flags.FLAGS.data_root:
    _os.environ[_data.DATA_ROOT_ENV] = _flags.FLAGS.data_root


def define_hiddenkiller_flags() -> None:
  """--hiddenkiller_dir and --hiddenkiller_poison_rate, for the binaries that train victims."""
  _flags.DEFINE_string("hiddenkiller_dir", "sst2/hiddenkiller",
                       "HiddenKiller's released SCPN paraphrases (train/test.tsv).")
  _flags.DEFINE_float("hiddenkiller_poison_rate", 0.18,
                      "HiddenKiller's rate: its release paraphrases 20% of the full split, "
                      "so a seeded subset has about 20% eligible rows; 0.18 always fits.",
                      lower_bound=0.0, upper_bound=1.0)
