"""Device-mesh and pmap helpers: data parallelism over all devices, on one host or many.

The mesh has one 'data' axis; batches are split along it and parameters are
replicated. Multi-host (several processes, e.g. TPU pod hosts or CPU processes):
call `jax.distributed.initialize(...)` first in every process, then run the same
program in each. `jax.devices()` spans every process, `data_mesh()` covers them
all, and every process passes the same global batch to `shard_batch` (each reads
the data itself; its devices keep their slice). Results come back with
`to_host`, which gathers across processes (tests/test_multihost.py runs exactly
this with two processes on one machine).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def data_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh named 'data' over `devices` (default: all devices)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', the rest replicated."""
  return NamedSharding(mesh, P(DATA))


def shard_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Places a host batch on the mesh, split along its leading axis."""
  size = mesh.shape[DATA]
  for name, x in batch.items():
    if np.shape(x)[0] % size:
      raise ValueError(
          f"Batch field {name!r} has {np.shape(x)[0]} rows, not a multiple of the "
          f"{size} devices on the mesh; pick a batch size divisible by {size}.")
  return jax.device_put(batch, batch_sharded(mesh))


def to_host(tree: Any) -> Any:
  """Every jax.Array leaf of `tree` as a host (NumPy) array of its global value: directly
  when this process holds all of it, from a local copy when it is replicated,
  else gathered from every process (`multihost_utils.process_allgather`; all
  processes must call this together)."""
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return jax.device_get(x)
    if x.sharding.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree_util.tree_map(one, tree)


def split_for_pmap(batch: dict[str, Any], devices: int) -> dict[str, np.ndarray]:
  """Reshapes a host batch [B, ...] to [devices, B / devices, ...] for `jax.pmap`."""
  for name, x in batch.items():
    if np.shape(x)[0] % devices:
      raise ValueError(f"Batch field {name!r} has {np.shape(x)[0]} rows, not a multiple of "
                       f"the {devices} local devices; pick a batch size divisible by it.")
  return {k: np.reshape(x, (devices, -1) + np.shape(x)[1:]) for k, x in batch.items()}


def stack_for_pmap(tree: Any, devices: int) -> Any:
  """One copy of every leaf per local device, stacked on a new leading axis, for
  `jax.pmap` (the replacement of the deprecated `jax.device_put_replicated`)."""
  return jax.tree_util.tree_map(lambda x: jax.numpy.stack([x] * devices), tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def pad_to_multiple(batch: dict[str, np.ndarray], multiple: int) -> tuple[dict, int]:
  """Pads every field's leading axis with copies of row 0 up to a multiple;
  returns (padded batch, number of real rows)."""
  n = len(next(iter(batch.values())))
  extra = -n % multiple
  if not extra:
    return batch, n
  return {k: np.concatenate([v, np.repeat(v[:1], extra, axis=0)]) for k, v in batch.items()}, n
