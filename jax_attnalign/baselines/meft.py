"""MEFT: maximum-entropy fine-tuning (Liu, Shen, Lin, Wang and Wang 2023, "Maximum
Entropy Loss, the Silver Bullet Targeting Backdoor Attacks in Pre-trained Language
Models"), then cross-entropy fine-tuning.

  params, report = meft(model, params, clean_train, clean_val, MEFTConfig(),
                        workdir="runs/meft")

The rule: fine-tune on the clean training rows minimising `max_entropy_loss`,
the mean KL(p || uniform) = log C - H(p) of the predicted class distributions
(the negative entropy up to a constant: the same gradient), until the stop
distance on the clean validation rows is under `stop_distance` (0.01, the
setting of the paper we reproduce), measured before training and after every
epoch, at most `max_entropy_epochs` epochs; then fine-tune with cross-entropy on
the clean training rows, which brings the clean task back and not the trigger's.

The stop distance, our reading (MEFT's own text was not available to us): the
largest Euclidean distance between two classes' centroids of the predicted
probability vectors on the validation rows, grouped by their true label.
Maximum-entropy training pulls every prediction to uniform, so the centroids
meet (the reproduced paper: MEFT "reduces the distance between centroids of
different classes"); in probability space 0.01 does not depend on the model's
width, as a distance between hidden representations would.

What else differs: both phases use `CleanFineTuning`'s optimizer and rate (the
MEFT paper's schedule is not known to us), and the distance is checked once per
epoch, so the last epoch may overshoot it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jax_attnalign import train
from jax_attnalign.baselines.finetune import (BaselineConfig, finetune_on_clean, fit_config,
                                              training_state)
from jax_attnalign.data.files import write_json
from jax_attnalign.defense import checks
from jax_attnalign.defense.scoring import model_fields
from jax_attnalign.models import apply_batch

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MEFTConfig(BaselineConfig):
  """stop_distance: where the maximum-entropy phase ends (0.01, the reproduced
  paper's setting); max_entropy_epochs: a cap on that phase, for a model whose
  classes never meet. `finetune` serves both phases.

  >>> MEFTConfig().stop_distance, MEFTConfig(max_entropy_epochs=2).max_entropy_epochs
  (0.01, 2)
  """
  stop_distance: float = 0.01
  max_entropy_epochs: int = 20

  def __post_init__(self):
    super().__post_init__()
    checks.in_range("MEFTConfig.stop_distance", self.stop_distance, 0.0, 2.0)
    checks.at_least("MEFTConfig.max_entropy_epochs", self.max_entropy_epochs, 1)


def max_entropy_loss(logits: Array) -> Array:
  """Mean over rows of KL(softmax(logits) || uniform) = log C - H(p); logits [B, C].

  >>> float(max_entropy_loss(jnp.zeros((2, 3))))  # uniform predictions: the minimum
  0.0
  >>> round(float(max_entropy_loss(jnp.array([[0.0, 100.0]]))), 4)  # one-hot: log 2
  0.6931
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1)) + jnp.log(logits.shape[-1])


def _max_entropy_objective(model, params, batch, rng, deterministic):
  """The max-entropy phase's `train.Objective`: labels are only reported on."""
  out = apply_batch(model, params, batch, deterministic=deterministic, rngs={"dropout": rng})
  value = max_entropy_loss(out.logits)
  return value, {"loss": value,
                 "accuracy": jnp.mean(jnp.argmax(out.logits, -1) == batch["labels"])}


def _stop_distance(model, params, clean_val: dict[str, np.ndarray], batch_size: int) -> float:
  """Largest distance between two classes' centroids of the predicted probabilities."""
  probs = np.asarray(jax.nn.softmax(train.predict_logits(model, params, clean_val,
                                                         batch_size=batch_size), -1))
  labels = clean_val["labels"]
  centroids = np.stack([probs[labels == c].mean(0) for c in np.unique(labels)])
  return float(np.linalg.norm(centroids[:, None] - centroids[None], axis=-1).max())


def meft(model, params, clean_train: dict[str, np.ndarray], clean_val: dict[str, np.ndarray],
         config: MEFTConfig = MEFTConfig(), *,
         workdir: str | pathlib.Path | None = None) -> tuple[dict, dict]:
  """MEFT with the defender's clean labelled rows: maximum entropy on `clean_train`
  until the stop distance on `clean_val` (module docstring), then cross-entropy
  on `clean_train`.

  Returns (params, report): report has the stop distance before training and
  after each max-entropy epoch, whether it was reached, and both phases' losses.
  With `workdir` both phases checkpoint there (the distances in
  max_entropy.json), and an interrupted run resumes.

  Example, a tiny random BERT: it does not tell the classes apart, so their
  centroids already coincide and no max-entropy epoch runs:
    >>> from jax_attnalign import ModelConfig, baselines, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = np.random.RandomState(0).randint(3, 64, (16, 6))
    >>> clean = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids[:, 1] % 2}
    >>> params = model.init(jax.random.key(0), ids[:2])["params"]
    >>> tuning = baselines.CleanFineTuning(epochs=1, batch_size=8)
    >>> _, report = meft(model, params, clean, clean, MEFTConfig(finetune=tuning))
    >>> report["stop_distance"][0] < 0.01, report["max_entropy_epochs"], report["reached"]
    (True, 0, True)
  """
  workdir = pathlib.Path(workdir) if workdir else None
  progress = workdir / "max_entropy.json" if workdir else None
  distances = json.loads(progress.read_text()) if progress and progress.exists() else []
  optimizer, state = training_state(model, params, config.finetune)
  arrays, history = model_fields(clean_train), []
  me_dir = str(workdir / "max_entropy") if workdir else None

  def max_entropy_epochs(epochs: int):
    return train.fit(model, state, optimizer, arrays,
                     fit_config(config.finetune, _max_entropy_objective, epochs),
                     workdir=me_dir, desc="MEFT: maximum-entropy fine-tune")

  if len(distances) > 1:  # resumed: the state after the epochs already measured
    state, history = max_entropy_epochs(len(distances) - 1)
  while (not distances or distances[-1] >= config.stop_distance) and (
      len(distances) <= config.max_entropy_epochs):
    if distances:
      state, history = max_entropy_epochs(len(distances))
    distances.append(_stop_distance(model, state.params, clean_val, config.batch_size))
    logging.info("MEFT: stop distance %.4f after %d max-entropy epochs.", distances[-1],
                 len(distances) - 1)
    if progress is not None:
      write_json(progress, distances)
  params, losses = finetune_on_clean(model, state.params, clean_train, config.finetune,
                                     desc="MEFT: cross-entropy fine-tune",
                                     workdir=workdir / "finetune" if workdir else None)
  return params, {"stop_distance": distances, "max_entropy_epochs": len(distances) - 1,
                  "reached": distances[-1] < config.stop_distance,
                  "max_entropy_loss": [h["loss"] for h in history], "finetune_loss": losses}
