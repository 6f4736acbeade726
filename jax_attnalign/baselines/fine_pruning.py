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

from jax_attnalign.baselines import pruning
from jax_attnalign.baselines.finetune import BaselineConfig, finetune_on_clean, stored_decision
from jax_attnalign.defense import checks
from jax_attnalign.models import layer_of, run_with_hooks

HIDDEN = "layers.*.mlp.hidden"
_TIE = 1e-9  # accuracies are counts over n: a drop of exactly max_drop stays within it


@dataclasses.dataclass(frozen=True)
class FinePruningConfig(BaselineConfig):
  """max_drop: the validation accuracy a step may cost in all before pruning stops
  (the paper's 4 points); step_fraction: the share of one layer's units pruned
  per step (the paper does not say; smaller is finer and slower).

  >>> FinePruningConfig(step_fraction=0.0)  # every step must prune something
  Traceback (most recent call last):
  ...
  ValueError: FinePruningConfig.step_fraction must lie in (0.0, 1.0), got 0.0.
  """
  max_drop: float = 0.04
  step_fraction: float = 0.05

  def __post_init__(self):
    super().__post_init__()
    checks.in_range("FinePruningConfig.max_drop", self.max_drop, 0.0, 1.0)
    checks.in_range("FinePruningConfig.step_fraction", self.step_fraction, 0.0, 1.0,
                    open_=True)


@functools.partial(jax.jit, static_argnames=("model",))
def _unit_sums(model, params, batch):
  """Per row: each unit's activation summed over the real tokens, [B, L, F]."""
  mask = batch["attention_mask"].astype(jnp.float32)
  _, sums = run_with_hooks(model, params, batch, summarize={
      HIDDEN: lambda h, name: jnp.einsum("btf,bt->bf", h.astype(jnp.float32), mask)})
  return jnp.stack([sums[name] for name in sorted(sums, key=layer_of)], axis=1)


def _unit_mean_activations(model, params, arrays: dict[str, np.ndarray],
                           batch_size: int) -> np.ndarray:
  """Each feed-forward unit's mean activation over the real tokens of `arrays`: [L, F]."""
  sums = pruning.per_row(_unit_sums, model, params, arrays, batch_size)
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
    >>> from jax_attnalign import ModelConfig, baselines, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = np.random.RandomState(0).randint(3, 64, (16, 6))
    >>> clean = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids[:, 1] % 2}
    >>> params = model.init(jax.random.key(0), ids[:2])["params"]
    >>> config = FinePruningConfig(finetune=baselines.CleanFineTuning(epochs=1, batch_size=8))
    >>> params, report = fine_pruning(model, params, clean, clean, config)
    >>> report["accuracy"], report["units_pruned"]  # one class, with or without its units
    (0.25, 64)
  """
  workdir = pathlib.Path(workdir) if workdir else None
  cfg = model.config

  def decide() -> dict:
    mean = _unit_mean_activations(model, params, clean_val, config.batch_size)
    order = _pruning_order(mean)
    step = max(1, round(config.step_fraction * cfg.intermediate_size))
    groups = [order[i:i + step] for i in range(0, len(order), step)]
    accuracy = pruning.pruned_accuracy(model, params, clean_val, batch_size=config.batch_size)
    floor = accuracy - config.max_drop - _TIE
    logging.info("Fine-Pruning: validation accuracy %.4f, floor %.4f, %d units per step.",
                 accuracy, floor, step)
    pruned, trace = pruning.prune_in_steps(
        groups, lambda mask: pruning.pruned_accuracy(
            model, params, clean_val, keep_units=~mask.reshape(mean.shape),
            batch_size=config.batch_size), floor, mean.size, backtrack=False)
    return {"accuracy": accuracy, "floor": floor, "units_per_step": step,
            "pruned_units": pruning.as_lists(pruned.reshape(mean.shape)), "trace": trace,
            "mean_activation": mean.tolist()}

  decision = stored_decision(workdir, "pruning", decide)
  keep = pruning.keep_mask(decision["pruned_units"], cfg.intermediate_size)
  logging.info("Fine-Pruning: %d of %d units pruned.", int((keep == 0).sum()), keep.size)
  params, losses = finetune_on_clean(
      model, pruning.zero_units(params, keep), clean_train, config.finetune,
      desc="Fine-Pruning: fine-tune", workdir=workdir / "finetune" if workdir else None)
  report = {k: v for k, v in decision.items() if k != "mean_activation"}
  return params, {**report, "units_pruned": int((keep == 0).sum()), "finetune_loss": losses}
