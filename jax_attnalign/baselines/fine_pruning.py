"""Fine-Pruning (Liu, Dolan-Gavitt and Garg 2018) on a transformer's feed-forward units.

  params, report = fine_pruning(model, params, clean_train, clean_val,
                                FinePruningConfig(), workdir="runs/fp")

The rule: rank the feed-forward units (`layers.<l>.mlp.hidden`) by their mean
activation over the real tokens of the clean validation rows; prune the least
active first, the last layer before the one below it, `step_fraction` of a
layer's units per step, while the validation accuracy stays within `max_drop` of
the unpruned model's (the paper's 4 points; the last step within the limit is
kept); then fine-tune on the clean training rows.

What differs from the paper: it pruned the channels of a CNN's last
convolutional layer; a transformer has no such last feature layer, so every
layer's MLP units are candidates, in the order above. Its fine-tune used the
training schedule of the victim; ours is `CleanFineTuning`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jax_attnalign import parallel
from jax_attnalign.baselines.finetune import (CleanFineTuning, finetune_on_clean,
                                              model_fields, stored_decision)
from jax_attnalign.baselines.pruning import prune_in_steps, pruned_accuracy, zero_units
from jax_attnalign.defense import checks
from jax_attnalign.defense.sanitize import per_input
from jax_attnalign.models import layer_of, run_with_hooks

HIDDEN = "layers.*.mlp.hidden"
_TIE = 1e-9  # accuracies are counts over n: a drop of exactly max_drop stays within it


@dataclasses.dataclass(frozen=True)
class FinePruningConfig:
  """The paper's 4-point limit; `step_fraction` of one layer's units per step.

  >>> FinePruningConfig().max_drop, FinePruningConfig(step_fraction=0.1).step_fraction
  (0.04, 0.1)
  """
  max_drop: float = 0.04
  step_fraction: float = 0.05
  batch_size: int = 32  # the forward passes that only read (activations, accuracy)
  finetune: CleanFineTuning = CleanFineTuning()

  def __post_init__(self):
    checks.in_range("FinePruningConfig.max_drop", self.max_drop, 0.0, 1.0)
    checks.in_range("FinePruningConfig.step_fraction", self.step_fraction, 0.0, 1.0,
                    open_=True)
    checks.at_least("FinePruningConfig.batch_size", self.batch_size, 1)


@functools.partial(jax.jit, static_argnames=("model",))
def _unit_sums(model, params, batch):
  """Per row: each unit's activation summed over the real tokens, [B, L, F]."""
  mask = batch["attention_mask"].astype(jnp.float32)
  _, sums = run_with_hooks(model, params, batch, summarize={
      HIDDEN: lambda h, name: jnp.einsum("btf,bt->bf", h.astype(jnp.float32), mask)})
  return jnp.stack([sums[name] for name in sorted(sums, key=layer_of)], axis=1)


def _unit_mean_activations(model, params, arrays: dict[str, np.ndarray],
                          batch_size: int = 32) -> np.ndarray:
  """Each feed-forward unit's mean activation over the real tokens of `arrays`: [L, F]."""
  sums = per_input(lambda b: _unit_sums(model, params, b), model_fields(arrays), batch_size,
                   parallel.data_mesh())
  return sums.sum(0) / float(np.sum(arrays["attention_mask"]))


def _pruning_order(mean_activation: np.ndarray) -> np.ndarray:
  """Flat unit indices (l * F + f) in pruning order: last layer first, least
  active first within a layer (ties by unit index)."""
  layers, units = mean_activation.shape
  layer = np.repeat(np.arange(layers), units)
  return np.lexsort((np.arange(layers * units), mean_activation.ravel(), -layer))


def fine_pruning(model, params, clean_train: dict[str, np.ndarray],
                 clean_val: dict[str, np.ndarray],
                 config: FinePruningConfig = FinePruningConfig(), *,
                 workdir: str | pathlib.Path | None = None) -> tuple[dict, dict]:
  """Fine-Pruning with the defender's clean labelled rows: `clean_val` ranks the
  units and bounds the accuracy drop, `clean_train` fine-tunes (module docstring).

  Returns (params, report): report has the validation accuracy before pruning,
  the floor, the pruned units per layer, the trace of every step and the
  fine-tune's loss. With `workdir` the pruning decision (pruning.json) and the
  fine-tune's checkpoints are kept there, and an interrupted run resumes.

  Example, a tiny random BERT (2 layers x 32 units):
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> rng = np.random.RandomState(0)
    >>> ids = rng.randint(3, 64, (16, 6)); ids[:, 0] = 1
    >>> clean = {"input_ids": ids, "attention_mask": np.ones_like(ids),
    ...          "labels": rng.randint(0, 2, 16)}
    >>> params = model.init(jax.random.key(0), ids[:2])["params"]
    >>> config = FinePruningConfig(finetune=CleanFineTuning(epochs=1, batch_size=8))
    >>> params, report = fine_pruning(model, params, clean, clean, config)
    >>> report["accuracy"], report["units_pruned"]  # one class, with or without its units
    (0.3125, 64)
  """
  workdir = pathlib.Path(workdir) if workdir else None
  cfg = model.config

  def decide() -> dict:
    mean = _unit_mean_activations(model, params, clean_val, config.batch_size)
    order = _pruning_order(mean)
    step = max(1, round(config.step_fraction * cfg.intermediate_size))
    groups = [order[i:i + step] for i in range(0, len(order), step)]
    accuracy = pruned_accuracy(model, params, clean_val, batch_size=config.batch_size)
    floor = accuracy - config.max_drop - _TIE
    logging.info("Fine-Pruning: validation accuracy %.4f, floor %.4f, %d units per step.",
                 accuracy, floor, step)
    pruned, trace = prune_in_steps(
        groups, lambda mask: pruned_accuracy(
            model, params, clean_val, keep_units=~mask.reshape(mean.shape),
            batch_size=config.batch_size), floor, mean.size, backtrack=False)
    pruned = pruned.reshape(mean.shape)
    return {"accuracy": accuracy, "floor": floor, "units_per_step": step,
            "pruned_units": [np.flatnonzero(p).tolist() for p in pruned], "trace": trace,
            "mean_activation": mean.tolist()}

  decision = stored_decision(workdir, "pruning", decide)
  keep = np.ones((cfg.num_layers, cfg.intermediate_size), np.float32)
  for layer, units in enumerate(decision["pruned_units"]):
    keep[layer, units] = 0.0
  logging.info("Fine-Pruning: %d of %d units pruned.", int((keep == 0).sum()), keep.size)
  params, losses = finetune_on_clean(model, zero_units(params, keep), clean_train,
                                     config.finetune, desc="Fine-Pruning: fine-tune",
                                     workdir=workdir / "finetune" if workdir else None)
  report = {k: v for k, v in decision.items() if k != "mean_activation"}
  return params, {**report, "units_pruned": int((keep == 0).sum()), "finetune_loss": losses}
