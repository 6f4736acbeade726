"""One jitted, data-parallel training step and loop, with orbax checkpoints and resume.

Used to inject backdoors (victim training) and by the defense's fine-tuning.
Losses: sequence classification (cross-entropy on the class logits) or causal
LM (next-token cross-entropy restricted to `loss_mask`, e.g. the response), or
an objective of the caller's (`Objective`: the baselines' max-entropy and
attention-normalised losses).

  state = TrainState.create(params, optimizer)
  state, history = fit(model, state, optimizer, arrays, loss="classification",
                       epochs=2, batch_size=32, workdir="ckpt")
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging

from jax_attnalign import parallel, validation
from jax_attnalign.checkpoint import Checkpointer
from jax_attnalign.data.batching import iterate_batches
from jax_attnalign.models import MODEL_INPUTS, apply_batch

Array = jax.Array
LOSSES = ("classification", "causal_lm")
# A loss of the caller's: (model, params, batch, rng, deterministic) -> (loss,
# metrics with 'loss'); hashable (a function, or a frozen dataclass of settings),
# being a static argument of the jitted step.
Objective = Callable[..., tuple[Array, dict]]
# Traces of the jitted steps by name (the Python body runs once per trace): a
# step whose optimizer is reused across rounds and seeds is traced once per shape.
TRACES: collections.Counter = collections.Counter()


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any

  @classmethod
  def create(cls, params, optimizer: optax.GradientTransformation,
             opt_state: Any = None) -> "TrainState":
    """Step 0; `opt_state` (e.g. `defense.headwise_init`'s) or optimizer.init(params)."""
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=optimizer.init(params) if opt_state is None else opt_state)


def classification_loss(logits: Array, batch: dict[str, Array]) -> tuple[Array, dict]:
  """Mean cross-entropy of class logits [B, C] against batch['labels'] [B]."""
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), batch["labels"])
  acc = jnp.mean(jnp.argmax(logits, -1) == batch["labels"])
  return jnp.mean(losses), {"accuracy": acc}


def causal_lm_loss(logits: Array, batch: dict[str, Array]) -> tuple[Array, dict]:
  """Next-token cross-entropy over the positions where batch['loss_mask'] is 1.

  logits: [B, T, V]; token t + 1 is predicted from position t, so position t
  counts when the *target* token t + 1 is in the mask. With
  batch['loss_positions'] (`with_loss_positions`), logits are [B, P, V] at
  those positions only.
  """
  logits, targets, weights = _next_token_targets(logits, batch)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  hits = (jnp.argmax(logits, -1) == targets) * weights
  total = jnp.maximum(jnp.sum(weights), 1.0)
  return jnp.sum(losses * weights) / total, {"token_accuracy": jnp.sum(hits) / total}


def _next_token_targets(logits: Array, batch: dict[str, Array]) -> tuple[Array, Array, Array]:
  """(logits, target tokens, weights) of the predicting positions: [B, T - 1]
  (every position but the last), or [B, P] at batch['loss_positions']."""
  ids = batch["input_ids"]
  if "loss_positions" not in batch:
    return logits[:, :-1], ids[:, 1:], batch["loss_mask"][:, 1:].astype(jnp.float32)
  positions, last = batch["loss_positions"], ids.shape[1] - 1
  targets = jnp.take_along_axis(ids, jnp.minimum(positions + 1, last), axis=1)
  return logits, targets, (positions < last).astype(jnp.float32)  # padding points at `last`


def with_loss_positions(batch: dict[str, np.ndarray], bucket: int = 8) -> dict[str, np.ndarray]:
  """The batch with 'loss_positions' [B, P] int32: the positions whose next token
  is in loss_mask, in order, padded with T - 1 (no next token: weight 0). P is the
  batch's largest count rounded up to `bucket`, so few shapes get compiled."""
  targets = np.asarray(batch["loss_mask"])[:, 1:] > 0  # [B, T - 1]
  width = max(1, -(-int(targets.sum(1).max()) // bucket) * bucket)
  positions = np.full((len(targets), width), targets.shape[1], np.int32)
  for row, hits in zip(positions, targets):
    found = np.flatnonzero(hits)
    row[:len(found)] = found
  return {**batch, "loss_positions": positions}


def _next_token_hits(logits: Array, batch: dict[str, Array]) -> tuple[Array, Array]:
  """(hits, weights) of the predicting positions (see `_next_token_targets`):
  the argmax is the next token, where the next token is in the loss."""
  logits, targets, weights = _next_token_targets(logits, batch)
  return (jnp.argmax(logits, -1) == targets) * weights, weights


def row_accuracy(logits: Array, batch: dict[str, Array], loss: str) -> Array:
  """Per row [B]: classification 1/0 correct; causal_lm the accuracy over its
  loss_mask tokens (0 for a row without any)."""
  if loss == "classification":
    return (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
  hits, weights = _next_token_hits(logits, batch)
  return hits.sum(-1) / jnp.maximum(weights.sum(-1), 1.0)


_LOSS_FNS = {"classification": classification_loss, "causal_lm": causal_lm_loss}


def loss_and_metrics(model, params, batch, rng, loss: Union[str, Objective],
                     deterministic: bool):
  if callable(loss):
    return loss(model, params, batch, rng, deterministic)
  positions = {"logit_positions": batch["loss_positions"]} if "loss_positions" in batch else {}
  out = apply_batch(model, params, batch, deterministic=deterministic,
                    rngs={"dropout": rng}, **positions)
  value, metrics = _LOSS_FNS[loss](out.logits, batch)
  return value, {"loss": value, **metrics}


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), donate_argnums=4)
def train_step(model, optimizer: optax.GradientTransformation, loss: Union[str, Objective],
               dropout: bool, state: TrainState, batch: dict[str, Array], rng: Array):
  """One jitted step -> (state, metrics); model, optimizer, loss and dropout are static.

  Data parallelism comes from the inputs' shardings: with the state replicated
  and the batch split along its leading axis over a mesh (`parallel.replicate`,
  `parallel.shard_batch`), XLA inserts the gradient all-reduce. The state is
  donated. Reusing the same optimizer object reuses the compiled step.
  """
  TRACES["train_step"] += 1
  rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(loss_and_metrics, argnums=1, has_aux=True)
  (_, metrics), grads = grad_fn(model, state.params, batch, rng, loss, not dropout)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(state.step + 1, params, opt_state), metrics


def _loss_weight(loss: str, batch: dict[str, Array]) -> Array:
  """How many terms a batch's mean loss averages: rows, or masked target tokens."""
  if loss == "causal_lm":
    return jnp.sum(batch["loss_mask"][:, 1:]).astype(jnp.float32)
  return jnp.float32(batch["labels"].shape[0])


@functools.partial(jax.pmap, axis_name=parallel.DATA, static_broadcasted_argnums=(0, 1, 2, 3),
                   donate_argnums=4)
def pmap_train_step(model, optimizer: optax.GradientTransformation, loss: str,
                    dropout: bool, state: TrainState, batch: dict[str, Array], rng: Array):
  """`train_step` for pmap-style code: state and rng replicated per device, batch
  [devices, B / devices, ...]. Gradients and metrics are averaged across devices
  weighted by each shard's number of loss terms, so the step equals the global
  batch's (also for causal LM with uneven masks). Dropout masks differ per device.
  """
  rng = jax.random.fold_in(jax.random.fold_in(rng, state.step),
                           jax.lax.axis_index(parallel.DATA))
  grad_fn = jax.value_and_grad(loss_and_metrics, argnums=1, has_aux=True)
  (_, metrics), grads = grad_fn(model, state.params, batch, rng, loss, not dropout)
  weight = _loss_weight(loss, batch)
  total = jnp.maximum(jax.lax.psum(weight, parallel.DATA), 1e-30)
  grads, metrics = jax.tree_util.tree_map(
      lambda x: jax.lax.psum(x * weight, parallel.DATA) / total, (grads, metrics))
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(state.step + 1, params, opt_state), metrics


def row_extents(mask: np.ndarray) -> np.ndarray:
  """Per row of an attention mask [n, T], its last attended slot + 1 (1 for a row
  with none): [n]. Columns from a batch's largest extent on are padding in every row."""
  mask = np.asarray(mask) > 0
  return np.where(mask.any(axis=1), mask.shape[1] - np.argmax(mask[:, ::-1], axis=1), 1)


def cut_padding(batch: dict[str, np.ndarray], bucket: int) -> dict[str, np.ndarray]:
  """Cuts the trailing columns that are padding in every row of the batch from its
  sequence-shaped fields ([n, T, ...]), keeping a multiple of `bucket` columns (few
  distinct shapes, so few compilations). A left-padded row ends on a token, so a
  batch holding one keeps its width."""
  width = batch["attention_mask"].shape[1]
  keep = min(width, -(-int(row_extents(batch["attention_mask"]).max()) // bucket) * bucket)
  return {k: (v[:, :keep] if np.ndim(v) > 1 and v.shape[1] == width else v)
          for k, v in batch.items()}


def trim_padding(batch: dict[str, np.ndarray], bucket: int) -> dict[str, np.ndarray]:
  """Cuts trailing all-padding columns of a right-padded batch, keeping a
  multiple of `bucket` columns (`cut_padding`)."""
  if not bucket:
    return batch
  mask = batch["attention_mask"]
  if mask[:, -1].any() and not mask[:, 0].all():
    raise ValueError("length bucketing needs right-padded batches (encoders).")
  return cut_padding(batch, bucket)


@dataclasses.dataclass
class FitConfig:
  loss: Union[str, Objective] = "classification"  # one of LOSSES, or an Objective
  epochs: int = 1
  batch_size: int = 32
  seed: int = 0
  dropout: bool = True
  checkpoint_every: int = 0  # steps; 0: only at the end of each epoch
  length_bucket: int = 0  # >0: cut right padding per batch to a multiple of this
  length_groups: int = 0  # >0: batch rows of similar length (see data.iterate_batches)
  log_every: int = 50
  parallelism: str = "mesh"  # "mesh" (jit over a device mesh) or "pmap" (local devices)


def fit(model, state: TrainState, optimizer: optax.GradientTransformation,
        arrays: dict[str, np.ndarray], config: FitConfig, *, workdir: str | None = None,
        mesh: jax.sharding.Mesh | None = None, desc: str | None = None
        ) -> tuple[TrainState, list[dict]]:
  """Trains for `config.epochs` epochs; with `workdir` it checkpoints and resumes.

  Data parallel over `mesh` (default: all devices) with `train_step`, or with
  `config.parallelism="pmap"` over all local devices with `pmap_train_step`.

  arrays: the encoded training set (input_ids, attention_mask, labels or
  loss_mask, ...), [n, ...] numpy each. A run that finds a checkpoint in
  `workdir` restores it and continues from the next unseen batch, so an
  interrupted run ends with the same parameters as an uninterrupted one.
  `desc` names the progress bar (default: "train (<loss>)"). Returns the final
  state and the per-step metrics history.
  """
  mesh = mesh or parallel.data_mesh()
  n = len(next(iter(arrays.values())))
  steps_per_epoch = n // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{n} training rows are fewer than one batch of {config.batch_size}.")
  total = steps_per_epoch * config.epochs
  history: list[dict] = []
  ckpt = Checkpointer(workdir) if workdir else None
  if ckpt is not None and ckpt.latest_step() is not None:
    state, meta = ckpt.restore(target=state)
    history = meta.get("history", [])
    logging.info("Resumed from %s at step %d of %d.", workdir, int(state.step), total)
  if not callable(config.loss) and config.loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES} or an Objective, got {config.loss!r}.")
  done = int(state.step)
  rng = jax.random.key(config.seed)
  if config.parallelism == "pmap":
    devices = jax.local_device_count()
    state, rngs = parallel.stack_for_pmap((state, rng), devices)
    step_fn = lambda s, b: pmap_train_step(model, optimizer, config.loss, config.dropout,
                                           s, parallel.split_for_pmap(b, devices), rngs)
    unreplicate = lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree)
  elif config.parallelism == "mesh":
    # A copy: the step donates its state, and the caller's arrays must survive.
    state = jax.tree_util.tree_map(lambda x: x.copy(), parallel.replicate(state, mesh))
    step_fn = lambda s, b: train_step(model, optimizer, config.loss, config.dropout, s,
                                      parallel.shard_batch(b, mesh), rng)
    unreplicate = lambda tree: tree
  else:
    raise ValueError(f"parallelism must be 'mesh' or 'pmap', got {config.parallelism!r}.")
  with tqdm.tqdm(total=total, initial=done, desc=desc or f"train ({config.loss})") as bar:
    for epoch in range(done // steps_per_epoch, config.epochs):
      batches = iterate_batches(arrays, config.batch_size, seed=config.seed, epoch=epoch,
                                drop_remainder=True, length_groups=config.length_groups)
      for i, batch in enumerate(batches):
        if epoch * steps_per_epoch + i < done:
          continue  # already trained on before the interruption
        batch = trim_padding(batch, config.length_bucket)
        if config.loss == "causal_lm":  # the LM head only where the loss reads it
          batch = with_loss_positions(batch)
        state, metrics = step_fn(state, batch)
        metrics = parallel.to_host(unreplicate(metrics))
        step = epoch * steps_per_epoch + i + 1
        history.append({"step": step, **{k: float(v) for k, v in metrics.items()}})
        bar.update(1)
        if step % config.log_every == 0:
          bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        at_epoch_end = step % steps_per_epoch == 0
        if ckpt is not None and (at_epoch_end or (
            config.checkpoint_every and step % config.checkpoint_every == 0)):
          ckpt.save(step, parallel.to_host(unreplicate(state)), metadata={"history": history})
  if ckpt is not None:
    ckpt.wait_until_finished()
    ckpt.close()
  return unreplicate(state), history


@functools.partial(jax.jit, static_argnames=("model",))
def _logits(model, params, batch):
  return apply_batch(model, params, batch).logits


def predict_logits(model, params, arrays: dict[str, np.ndarray], batch_size: int = 64,
                   mesh: jax.sharding.Mesh | None = None,
                   length_bucket: int = 0) -> np.ndarray:
  """Class logits [n, C] for an encoded set, data-parallel, in order."""
  validation.batch_inputs(model.config, arrays, where="predict_logits")
  mesh = mesh or parallel.data_mesh()
  params = parallel.replicate(params, mesh)
  size = mesh.shape[parallel.DATA]
  batch_size = -(-batch_size // size) * size
  inputs = {k: v for k, v in arrays.items() if k in MODEL_INPUTS}
  n = len(inputs["input_ids"])
  out = []
  for start in range(0, n, batch_size):
    batch, real = parallel.pad_to_multiple(trim_padding(
        {k: v[start:start + batch_size] for k, v in inputs.items()}, length_bucket),
        batch_size)
    logits = _logits(model, params, parallel.shard_batch(batch, mesh))
    out.append(parallel.to_host(logits)[:real])
  return np.concatenate(out)
