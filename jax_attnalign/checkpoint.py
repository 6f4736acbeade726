"""Orbax checkpoints of a training state (params, optimizer state, step) plus JSON metadata.

  with Checkpointer(workdir) as ckpt:
    ckpt.save(step, state, metadata={"history": history})
    state, metadata = ckpt.restore(target=abstract_or_example_state)
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from jax_attnalign.errors import CheckpointError


class _NoOrbaxInfo(logging.Filter):
  """Drops orbax's INFO bookkeeping (thirty-odd lines per save and restore, logged
  through absl); its warnings and errors, and every other library's lines, pass."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


# orbax logs through absl's logger: quiet by default wherever checkpoints are written.
logging.getLogger("absl").addFilter(_NoOrbaxInfo())


class Checkpointer:
  """A thin `orbax.checkpoint.CheckpointManager` over (state pytree, metadata dict)."""

  def __init__(self, directory: str | pathlib.Path, max_to_keep: int | None = 2):
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             cleanup_tmp_directories=True))

  def save(self, step: int, state: Any, metadata: dict | None = None,
           force: bool = False) -> bool:
    """Saves `state` at `step` (asynchronously; see `wait_until_finished`).

    `metadata` must be JSON-serialisable (plain ints, floats, strings, lists).
    Returns whether a checkpoint was written: orbax silently skips a step at or
    below the latest saved one unless `force`; forcing an existing step raises
    orbax's `StepAlreadyExistsError`.
    """
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        metadata=ocp.args.JsonSave(metadata or {})), force=force)

  def steps(self) -> list[int]:
    """The saved steps, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The highest saved step, or None."""
    # Not the manager's latest_step(): after a forced save of a lower step it
    # reports that step until the directory is reopened, then the highest one.
    steps = self.steps()
    return steps[-1] if steps else None

  def restore(self, step: int | None = None, target: Any = None) -> tuple[Any, dict]:
    """Restores (state, metadata) at `step` (default: the latest intact one: a
    corrupt latest step is logged and the step before it restored).

    `target` is a pytree of arrays or `jax.ShapeDtypeStruct`s with the state's
    structure (optax states, dataclasses): the result comes back in its types,
    dtypes and shardings. Without it, orbax returns nested dicts and lists
    (optax NamedTuples become lists, empty states None).
    """
    if step is not None:
      return self._restore(step, target)
    steps = self.steps()
    if not steps:
      raise FileNotFoundError(f"No checkpoint to restore in {self.directory}.")
    for candidate in reversed(steps[1:]):
      try:
        return self._restore(candidate, target)
      except CheckpointError as e:
        logging.getLogger("absl").warning("%s Resuming from the step before it.", e)
    return self._restore(steps[0], target)

  def _restore(self, step: int, target: Any) -> tuple[Any, dict]:
    abstract = None if target is None else jax.tree_util.tree_map(
        ocp.utils.to_shape_dtype_struct, target)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()))
    except FileNotFoundError:
      raise
    except Exception as e:  # orbax and tensorstore raise many kinds; all mean a bad step
      raise CheckpointError(
          f"The checkpoint step {step} in {self.directory / str(step)} is corrupt or does "
          f"not fit the state ({type(e).__name__}: {str(e)[:200]}).") from e
    return restored.state, dict(restored.metadata or {})

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.wait_until_finished()
    self.close()
