"""The clean-data fine-tune every baseline ends with (and MEFT's max-entropy phase).

  params, losses = finetune_on_clean(model, params, clean, CleanFineTuning(),
                                     frozen_heads=pruned, workdir="runs/fp/finetune")

One optimizer for all three baselines and for our method's uniform fine-tune:
the head-wise Adam (`defense.headwise_optimizer`) with every head at one rate,
so the compiled `train.train_step` is shared. Heads in `frozen_heads` get rate 0,
an exactly zero update: a pruned head stays pruned.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable

import numpy as np
import optax

from jax_attnalign import train
from jax_attnalign.analysis import HeadClass
from jax_attnalign.data.files import write_json
from jax_attnalign.defense import checks
from jax_attnalign.defense.headwise import HeadRates, headwise_init, headwise_optimizer
from jax_attnalign.defense.scoring import model_fields


@dataclasses.dataclass(frozen=True)
class CleanFineTuning:
  """Adam at one rate on the defender's clean rows, with dropout (as in the papers).

  The papers' fine-tunes (PURE: AdamW 2e-5, linear decay, gradient clipping 1.0,
  3 epochs on 60k SST-2 sentences) see far more rows than the 500 our defender
  holds; the default here is our method's budget (3 epochs, batch 32) at its
  uniform rate 1e-4, so every column fine-tunes alike.

  >>> CleanFineTuning().learning_rate, CleanFineTuning(epochs=1).epochs
  (0.0001, 1)
  """
  learning_rate: float = 1e-4
  epochs: int = 3
  batch_size: int = 32
  seed: int = 0

  def __post_init__(self):
    checks.rate("CleanFineTuning.learning_rate", self.learning_rate)
    checks.at_least("CleanFineTuning.epochs", self.epochs, 1)
    checks.at_least("CleanFineTuning.batch_size", self.batch_size, 1)
    checks.at_least("CleanFineTuning.seed", self.seed, 0)


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
  """What every baseline's config has: the batch of its forward passes that only
  read (rankings, accuracies) and its clean fine-tune."""
  batch_size: int = 32
  finetune: CleanFineTuning = CleanFineTuning()

  def __post_init__(self):
    checks.at_least(f"{type(self).__name__}.batch_size", self.batch_size, 1)


def training_state(model, params, tuning: CleanFineTuning,
                   frozen_heads: np.ndarray | None = None
                   ) -> tuple[optax.GradientTransformation, train.TrainState]:
  """(optimizer, step-0 state): every parameter at `tuning.learning_rate`, the
  heads of `frozen_heads` ([L, N] bool) at 0."""
  cfg = model.config
  frozen = (np.zeros((cfg.num_layers, cfg.num_heads), bool) if frozen_heads is None
            else np.asarray(frozen_heads, bool))
  labels = np.where(frozen, int(HeadClass.SUSPICIOUS), int(HeadClass.SAFE))
  rate = tuning.learning_rate
  optimizer = headwise_optimizer(params)
  rates = HeadRates(suspicious=0.0, intermediate=rate, safe=rate)
  return optimizer, train.TrainState.create(
      params, optimizer, headwise_init(optimizer, params, labels, cfg, rates))


def fit_config(tuning: CleanFineTuning, loss: str | train.Objective = "classification",
               epochs: int | None = None) -> train.FitConfig:
  return train.FitConfig(loss=loss, epochs=epochs or tuning.epochs,
                         batch_size=tuning.batch_size, seed=tuning.seed)


def finetune_on_clean(model, params, clean: dict[str, np.ndarray], tuning: CleanFineTuning,
                      *, loss: str | train.Objective = "classification",
                      frozen_heads: np.ndarray | None = None,
                      workdir: str | pathlib.Path | None = None,
                      desc: str = "clean fine-tune") -> tuple[dict, list[float]]:
  """`train.fit` on the clean rows (`loss`: cross-entropy, or a baseline's
  objective); with `workdir` it checkpoints and resumes. Returns (params, loss
  per step)."""
  optimizer, state = training_state(model, params, tuning, frozen_heads)
  state, history = train.fit(model, state, optimizer, model_fields(clean),
                             fit_config(tuning, loss), desc=desc,
                             workdir=str(workdir) if workdir else None)
  return state.params, [h["loss"] for h in history]


def stored_decision(workdir: str | pathlib.Path | None, name: str,
                    decide: Callable[[], dict]) -> dict:
  """`decide()`, written to workdir/name.json; read back from there when a run
  is resumed (pruning decisions cost many forward passes and must not change)."""
  path = pathlib.Path(workdir) / f"{name}.json" if workdir else None
  if path is not None and path.exists():
    return json.loads(path.read_text())
  decision = decide()
  if path is not None:
    write_json(path, decision)
  return decision
