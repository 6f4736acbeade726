"""Orbax checkpoints restore params and optimizer state exactly, quietly."""

import logging
import os

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
import pytest

from jax_attnalign.checkpoint import Checkpointer


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def _trained_state(steps: int) -> TrainState:
  model = nn.Sequential([nn.Dense(7), nn.relu, nn.Dense(3)])
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 11))
  params = model.init(jax.random.PRNGKey(1), x)["params"]
  optimizer = optax.adamw(1e-2)
  state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  loss = lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)
  for _ in range(steps):
    updates, opt_state = optimizer.update(jax.grad(loss)(state.params), state.opt_state,
                                          state.params)
    state = TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)
  return state


def test_restore_is_exact(tmp_path):
  state = _trained_state(3)
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, state, metadata={"history": [{"step": 3, "loss": 0.5}]})
  fresh = _trained_state(0)  # same structure, different values
  with Checkpointer(tmp_path) as ckpt:
    restored, meta = ckpt.restore(target=fresh)
  assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
  assert isinstance(restored, TrainState)
  assert isinstance(restored.opt_state[0], optax.ScaleByAdamState)
  chex.assert_trees_all_equal(restored, state)  # bitwise
  assert meta == {"history": [{"step": 3, "loss": 0.5}]}


def test_latest_step_and_resume(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=5) as ckpt:
    assert ckpt.latest_step() is None
    for step in (1, 2, 4):
      ckpt.save(step, _trained_state(step))
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 4
    restored, _ = ckpt.restore(target=_trained_state(0))
    assert int(restored.step) == 4
    older, _ = ckpt.restore(step=2, target=_trained_state(0))
    chex.assert_trees_all_equal(older, _trained_state(2))


def test_restore_without_checkpoint_names_the_directory(tmp_path):
  with Checkpointer(tmp_path / "empty") as ckpt:
    with pytest.raises(FileNotFoundError, match="empty"):
      ckpt.restore(target=_trained_state(0))


def test_restore_into_an_abstract_sharded_target(tmp_path):
  state = _trained_state(2)
  mesh = jax.sharding.Mesh(jax.devices(), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  target = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(lambda: state))
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(2, state)
    restored, meta = ckpt.restore(target=target)
  assert meta == {}
  assert isinstance(restored, TrainState)
  assert restored.params["layers_0"]["kernel"].sharding == replicated
  chex.assert_trees_all_equal(restored, state)


def test_save_skips_steps_at_or_below_the_latest_unless_forced(tmp_path):
  state = _trained_state(0)
  with Checkpointer(tmp_path, max_to_keep=None) as ckpt:
    assert ckpt.save(5, state)
    assert not ckpt.save(5, state)
    assert not ckpt.save(3, state)
    assert ckpt.save(3, state, force=True)
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 5  # the highest step, not the last one saved
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 5


def test_orbax_info_lines_are_off_and_its_warnings_on(tmp_path, caplog):
  """A save and a restore log nothing of orbax's below WARNING, even with INFO asked
  for; orbax's warnings still reach the handlers."""
  caplog.set_level(logging.INFO)
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _trained_state(1))
  with Checkpointer(tmp_path) as ckpt:
    ckpt.restore(target=_trained_state(0))
  orbax = f"{os.sep}orbax{os.sep}"
  assert not [r.getMessage() for r in caplog.records if orbax in r.pathname]
  absl = logging.getLogger("absl")
  record = lambda level: absl.makeRecord("absl", level, f"{os.sep}site-packages{orbax}x.py",
                                         1, "orbax says", (), None)
  assert absl.filter(record(logging.WARNING)) and not absl.filter(record(logging.INFO))
  assert absl.filter(absl.makeRecord("absl", logging.INFO, "ours.py", 1, "ours", (), None))
