"""Sanitisation rounds: classify heads -> align -> head-wise fine-tune -> re-measure.

  params, report = sanitize(model, params, suspects, clean, SanitizeConfig())

A round (paper sections "Attention Safety Alignment" and "Head-wise Fine-tuning"):
  1. classify: each head's largest mean cosine to another head on the suspect
     inputs (the view; `scope` layer or model), gradient importance on the
     suspects (labels: the model's own predictions, or given), eq. 5 -> head
     classes; heads of layers outside the view are intermediate;
  2. align: `Alignment.steps` Adam steps of eq. 7 on the suspects, safe heads frozen;
  3. fine-tune: `train.fit` on the clean data with per-head learning rates
     (`FineTuning.when="repair"`: only if step 2 cost clean accuracy);
  4. re-measure: the detector's score of every suspect (or `flag_after_round`, or
     with `Stopping.flag="target_class"` the suspects' predicted class).
Rounds stop (DESIGN.md) when fewer than `Stopping.stop_fraction` of the suspects
(or of the inputs `flag_after_round` reads) are still flagged, or after
`max_rounds`; `stop="fixed"` runs exactly `max_rounds`. No safe head ends the run
with `stopped="empty_safe_set"`.
The head classes are an argument of the jitted alignment step and the per-head
rates optimizer state, so rounds, restarts and seeds reuse one compiled
alignment step and one fine-tune step per shape.

With `workdir`, the parameters and the report are checkpointed (orbax) after
every round and the fine-tune inside a round checkpoints itself, so a killed run
resumes where it stopped and ends with the same parameters as an uninterrupted
one. The stop is decided again on resuming, so a finished run called with a
larger `max_rounds` (or `stop="fixed"`) goes on from its last round;
`keep_rounds` keeps every round's checkpoint (step k: after k rounds), not only
the last two; a round's fine-tune checkpoint is deleted once the round's own is
written. `flagged_inputs` turns a calibrated detector's flags into the
suspects (the paper's label-free, input-triggered mode).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import shutil
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging

from jax_attnalign import parallel, train, validation
from jax_attnalign.analysis import (HeadClass, class_counts, classify_heads,
                                    head_gate_gradients, head_similarity,
                                    max_other_similarity, normalize_importance,
                                    require_safe_heads, resolve_view, safety_scores,
                                    streaming_head_similarity)
from jax_attnalign.checkpoint import Checkpointer
from jax_attnalign.defense import checks
from jax_attnalign.defense.alignment import (TRAINABLE, alignment_optimizer, alignment_rates,
                                             alignment_step)
from jax_attnalign.defense.detector import Detector, DetectorConfig
from jax_attnalign.defense.headwise import HeadRates, headwise_init, headwise_optimizer
# scores_of, calibrated_detector, flagged_inputs and per_input stay importable from here.
from jax_attnalign.errors import InputError
from jax_attnalign.defense.scoring import (calibrated_detector, flagged_inputs,  # noqa: F401
                                           model_fields, per_input, scores_of, view_kwargs)
from jax_attnalign.models import (MODEL_INPUTS, PATTERNS, apply_batch, attention_maps,
                                  run_with_hooks)

STAGES = ("align", "finetune")


@dataclasses.dataclass(frozen=True)
class HeadClassification:
  """Step 1, the head classes of eq. 5 (DESIGN.md's defaults).

  >>> HeadClassification(tau=0.6)  # tau <= 1 - tau
  Traceback (most recent call last):
  ...
  ValueError: HeadClassification.tau must lie in [0.0, 0.5], got 0.6.
  """
  view: str = "cls_row_nospecial"
  scope: Literal["layer", "model"] = "layer"
  alpha: float = 0.7
  tau: float = 0.3
  similarity_term: Literal["minmax", "raw"] = "minmax"
  importance_labels: Literal["predictions", "given"] = "predictions"
  normalization: Literal["global_max", "layer_l2", "none"] = "global_max"

  def __post_init__(self):
    checks.view("HeadClassification.view", self.view)
    checks.choice("HeadClassification.scope", self.scope, ("layer", "model"))
    checks.in_range("HeadClassification.alpha", self.alpha, 0.0, 1.0)
    checks.in_range("HeadClassification.tau", self.tau, 0.0, 0.5)  # tau <= 1 - tau
    checks.choice("HeadClassification.similarity_term", self.similarity_term,
                  ("minmax", "raw"))
    checks.choice("HeadClassification.importance_labels", self.importance_labels,
                  ("predictions", "given"))
    checks.choice("HeadClassification.normalization", self.normalization,
                  ("global_max", "layer_l2", "none"))


@dataclasses.dataclass(frozen=True)
class Alignment:
  """Step 2, Adam steps of eq. 7 on the suspects.

  `trainable` was measured on the BadNets MiniLM (SST-2, seed 0, 600 held-out
  inputs each): DESIGN.md's 'heads' (all non-safe heads) collapses CA to 0.49
  after alignment and leaves 0.78-0.81 after fine-tuning (from 0.87);
  'suspicious' keeps 0.845 with ASR 1.00 -> 0.26. 'heads' stays an option.

  >>> Alignment().trainable, Alignment(steps=10).steps
  ('suspicious', 10)
  """
  steps: int = 40
  learning_rate: float = 1e-3
  batch_size: int = 32
  trainable: Literal["heads", "suspicious", "all_non_safe"] = "suspicious"

  def __post_init__(self):
    checks.at_least("Alignment.steps", self.steps, 1)
    checks.rate("Alignment.learning_rate", self.learning_rate)
    checks.at_least("Alignment.batch_size", self.batch_size, 1)
    checks.choice("Alignment.trainable", self.trainable, TRAINABLE)


@dataclasses.dataclass(frozen=True)
class FineTuning:
  """Step 3, `train.fit` on the clean data with per-head learning rates (the paper's).

  `when`: "always", every round fine-tunes after aligning (the paper); "repair",
  it fine-tunes only when alignment cost more than `repair_tolerance` of the
  task's accuracy on the clean data. Neither wins everywhere (README): on the
  three 2,000-sentence SST-2 BadNets victims "repair" takes ASR to 0.257 (paper:
  0.314) at no CA cost; on a full-split victim and on the demo's tweets the
  paper's fine-tune does better. The default stays the paper's.

  >>> FineTuning().when, FineTuning(when="repair").repair_tolerance
  ('always', 0.01)
  """
  rates: HeadRates = HeadRates()
  other: Literal["moderate", "frozen"] = "moderate"
  loss: str = "classification"
  epochs: int = 3
  batch_size: int = 32
  length_bucket: int = 0  # >0: trim right padding of fine-tuning batches (encoders)
  when: Literal["always", "repair"] = "always"
  repair_tolerance: float = 0.01

  def __post_init__(self):
    checks.choice("FineTuning.other", self.other, ("moderate", "frozen"))
    checks.choice("FineTuning.loss", self.loss, train.LOSSES)
    checks.at_least("FineTuning.epochs", self.epochs, 1)
    checks.at_least("FineTuning.batch_size", self.batch_size, 1)
    checks.at_least("FineTuning.length_bucket", self.length_bucket, 0)
    checks.choice("FineTuning.when", self.when, ("always", "repair"))
    checks.finite("FineTuning.repair_tolerance", self.repair_tolerance)


@dataclasses.dataclass(frozen=True)
class Stopping:
  """When the rounds stop: fewer than `stop_fraction` of the suspects still flagged
  ("threshold", DESIGN.md) or `max_rounds` rounds; "fixed" runs exactly `max_rounds`.

  `flag` says what "still flagged" reads: "detector", the paper's, the calibrated
  detector's flags of the suspects (blind where the detector is: a trigger it
  cannot see looks removed after the first round); "target_class", a classifier's
  own predictions: a suspect is still flagged while the model gives it the
  *target class*, the class it gave most suspects before the first round. It
  needs no detector and no labels and sees any trigger the suspects carry; it
  reads the share of suspects a backdoor still moves, so a stream whose
  triggered inputs are often of the target class already keeps more of them
  there, and the rounds run longer (up to `max_rounds`). A `flag_after_round`
  given to `sanitize` takes precedence over either.

  >>> Stopping().stop, Stopping(stop="fixed", max_rounds=2).max_rounds, Stopping().flag
  ('threshold', 2, 'detector')
  """
  stop: Literal["threshold", "fixed"] = "threshold"
  max_rounds: int = 3
  stop_fraction: float = 0.5
  flag: Literal["detector", "target_class"] = "detector"

  def __post_init__(self):
    checks.choice("Stopping.stop", self.stop, ("threshold", "fixed"))
    checks.choice("Stopping.flag", self.flag, ("detector", "target_class"))
    checks.at_least("Stopping.max_rounds", self.max_rounds, 1)
    checks.in_range("Stopping.stop_fraction", self.stop_fraction, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class SanitizeConfig:
  """Every choice of the method, by step; defaults are DESIGN.md's.

  The detector that decides "still flagged" is calibrated by the caller, or by
  `sanitize` from a `DetectorConfig`; restarts are `sanitize_restarts`' (a
  `RestartConfig`): `sanitize` itself is one run.

  >>> config = SanitizeConfig(align=Alignment(steps=10), stopping=Stopping(max_rounds=1))
  >>> config.align.steps, config.classify.view, config.stages
  (10, 'cls_row_nospecial', ('align', 'finetune'))
  """
  classify: HeadClassification = HeadClassification()
  align: Alignment = Alignment()
  finetune: FineTuning = FineTuning()
  stopping: Stopping = Stopping()
  stages: tuple[str, ...] = STAGES  # ablations: ("align",) or ("finetune",)
  score_batch_size: int = 32  # the forward passes that only read: classify, score, accuracy
  seed: int = 0

  def __post_init__(self):
    for name, kind in (("classify", HeadClassification), ("align", Alignment),
                       ("finetune", FineTuning), ("stopping", Stopping)):
      if not isinstance(getattr(self, name), kind):
        raise ValueError(f"SanitizeConfig.{name} must be a {kind.__name__}, "
                         f"got {getattr(self, name)!r}.")
    if not self.stages or set(self.stages) - set(STAGES):
      raise ValueError(f"SanitizeConfig.stages must be a non-empty subset of {STAGES}, "
                       f"got {self.stages!r}.")
    checks.at_least("SanitizeConfig.score_batch_size", self.score_batch_size, 1)
    checks.at_least("SanitizeConfig.seed", self.seed, 0)


@functools.partial(jax.jit, static_argnames=("model", "view", "scope"))
def _suspect_cosine(model, params, batch, view: str, scope: str):
  """Per-input head cosine of the view: [B, L', N, N] (layer) or [B, L'N, L'N] (model)."""
  extra = {k: batch[k] for k in MODEL_INPUTS[2:] if k in batch}
  if scope == "layer":
    return streaming_head_similarity(model, params, batch["input_ids"],
                                     batch["attention_mask"], view, **view_kwargs(batch),
                                     **extra)
  _, captured = run_with_hooks(model, params, batch, capture=PATTERNS)
  return head_similarity(attention_maps(captured), view, attention_mask=batch["attention_mask"],
                         is_decoder=model.config.is_decoder, scope="model",
                         **view_kwargs(batch))


_NONFINITE_FIX = ("the round stops before it changes any weight; check those inputs' "
                  "token ids and the model's weights (a NaN weight spreads to every "
                  "input), and pass given labels only within the classes")


def classify(model, params, suspects: dict[str, np.ndarray], config: SanitizeConfig,
             mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
  """Step 1 of a round: {'max_similarity', 'importance', 'safety', 'labels'}, each [L, N]."""
  cfg, heads = model.config, config.classify
  view = resolve_view(heads.view)
  layers = list(view.layer_indices(cfg.num_layers))
  cos = per_input(lambda b: _suspect_cosine(model, params, b, heads.view, heads.scope),
                  suspects, config.score_batch_size, mesh)
  cos = validation.finite_values(
      f"classify: the head similarity (view {heads.view!r}) of suspect inputs", cos,
      fix=_NONFINITE_FIX).mean(axis=0)
  sim_viewed = np.asarray(max_other_similarity(jnp.asarray(cos))).reshape(len(layers), -1)
  use_predictions = heads.importance_labels == "predictions"
  if not use_predictions and "labels" not in suspects and "loss_mask" not in suspects:
    raise ValueError("importance_labels='given' needs 'labels' (or 'loss_mask') in the "
                     "suspect inputs; use importance_labels='predictions' without labels.")
  grads = per_input(lambda b: head_gate_gradients(model, params, b,
                                                  use_predictions=use_predictions),
                    model_fields(suspects), config.score_batch_size, mesh)
  validation.finite_values("classify: the head importance (eq. 4 gate gradients) of "
                           "suspect inputs", grads, fix=_NONFINITE_FIX)
  importance = np.asarray(normalize_importance(jnp.asarray(np.abs(grads).mean(axis=0)),
                                               heads.normalization))
  safety = np.asarray(safety_scores(sim_viewed, importance[layers], heads.alpha,
                                    heads.similarity_term))
  labels = np.full((cfg.num_layers, cfg.num_heads), int(HeadClass.INTERMEDIATE), np.int32)
  labels[layers] = classify_heads(safety, heads.tau)
  max_similarity = np.full(labels.shape, np.nan, np.float32)
  max_similarity[layers] = sim_viewed
  full_safety = np.full(labels.shape, np.nan, np.float32)
  full_safety[layers] = safety
  return {"max_similarity": max_similarity, "importance": importance,
          "safety": full_safety, "labels": labels}


def _round_name(round_index: int, config: SanitizeConfig) -> str:
  """How the progress bars name a round: 'sanitize round 2/3' (counted from 1)."""
  return f"sanitize round {round_index + 1}/{config.stopping.max_rounds}"


@functools.partial(jax.jit, static_argnames=("model", "optimizer", "view"))
def _align_step(model, optimizer, view: str, params, opt_state, batch, labels):
  """`alignment_step` compiled once per model, optimizer, view and shapes: the head
  classes are an argument, the rates optimizer state."""
  train.TRACES["align_step"] += 1
  return alignment_step(model, optimizer, view)(params, opt_state, batch, labels)


def align(model, params, suspects: dict[str, np.ndarray], labels: np.ndarray,
          config: SanitizeConfig, mesh: jax.sharding.Mesh, round_index: int = 0
          ) -> tuple[dict, list[float]]:
  """Step 2: `Alignment.steps` Adam steps of eq. 7; returns (params, loss per step).

  Each step takes `Alignment.batch_size` suspects (a multiple of the devices) from a
  seeded permutation, wrapping around, so every batch is full. Raises
  EmptySafeSetError without a safe head.
  """
  require_safe_heads(labels)
  optimizer = alignment_optimizer(params, trainable=config.align.trainable)
  opt_state = headwise_init(optimizer, params, labels, model.config,
                            alignment_rates(config.align.learning_rate, config.align.trainable))
  suspects = model_fields(suspects)
  n = len(suspects["input_ids"])
  devices = mesh.shape[parallel.DATA]
  size = max(devices, min(config.align.batch_size, n) // devices * devices)
  order = np.random.default_rng(config.seed).permutation(n)
  params, opt_state, labels = parallel.replicate((params, opt_state, jnp.asarray(labels)), mesh)
  losses = []
  with tqdm.trange(config.align.steps, leave=False,
                   desc=f"{_round_name(round_index, config)}: align (eq. 7)") as bar:
    for s in bar:
      idx = order[(s * size + np.arange(size)) % n]
      batch = parallel.shard_batch({k: v[idx] for k, v in suspects.items()}, mesh)
      params, opt_state, loss = _align_step(model, optimizer, config.classify.view, params,
                                            opt_state, batch, labels)
      losses.append(float(loss))
      bar.set_postfix(loss=f"{losses[-1]:.4f}")
  return params, losses


@functools.partial(jax.jit, static_argnames=("model", "loss"))
def _row_accuracy(model, params, batch, loss: str):
  return train.row_accuracy(apply_batch(model, params, batch).logits, batch, loss)


def task_accuracy(model, params, clean: dict[str, np.ndarray], config: SanitizeConfig,
                   mesh: jax.sharding.Mesh) -> float:
  """The task's accuracy on the clean rows (mean over rows), data-parallel."""
  return float(per_input(lambda b: _row_accuracy(model, params, b, config.finetune.loss),
                         model_fields(clean), config.score_batch_size, mesh).mean())


def predictions(model, params, arrays: dict[str, np.ndarray], config: SanitizeConfig,
                mesh: jax.sharding.Mesh) -> np.ndarray:
  """A classifier's predicted class per input [n], data-parallel."""
  return train.predict_logits(model, params, arrays, batch_size=config.score_batch_size,
                              mesh=mesh).argmax(-1)


def target_class(model, params, arrays: dict[str, np.ndarray], config: SanitizeConfig,
                 mesh: jax.sharding.Mesh) -> int:
  """The class a classifier gives most of the inputs: a backdoor's target, read off
  the inputs believed triggered (suspects, or the restarts' watched inputs)."""
  return int(np.bincount(predictions(model, params, arrays, config, mesh)).argmax())


def finetune(model, params, clean: dict[str, np.ndarray], labels: np.ndarray,
             config: SanitizeConfig, mesh: jax.sharding.Mesh, round_index: int,
             workdir: pathlib.Path | None) -> tuple[dict, list[float]]:
  """Step 3: head-wise fine-tuning on the clean data; returns (params, loss per step)."""
  tuning = config.finetune
  optimizer = headwise_optimizer(params, other=tuning.other)
  state = train.TrainState.create(
      params, optimizer, headwise_init(optimizer, params, labels, model.config, tuning.rates))
  fit_cfg = train.FitConfig(loss=tuning.loss, epochs=tuning.epochs,
                            batch_size=tuning.batch_size, seed=config.seed + round_index,
                            length_bucket=tuning.length_bucket)
  state, history = train.fit(
      model, state, optimizer, model_fields(clean), fit_cfg,
      workdir=str(workdir / f"finetune_round{round_index}") if workdir else None, mesh=mesh,
      desc=f"{_round_name(round_index, config)}: head-wise fine-tune")
  return state.params, [h["loss"] for h in history]


_EMPTY_SAFE_SET = "no safe head: eq. 6's safe mean is undefined; parameters unchanged"


def _stop_reason(entry: dict, config: Stopping) -> str | None:
  """Why the rounds stop after round `entry` (None: they go on)."""
  if entry.get("note") == _EMPTY_SAFE_SET:
    return "empty_safe_set"
  if config.stop == "threshold" and entry["flagged_fraction"] < config.stop_fraction:
    return "threshold"
  return "max_rounds" if entry["round"] + 1 >= config.max_rounds else None


def sanitize(model, params, suspect_inputs: dict[str, np.ndarray],
             clean_data: dict[str, np.ndarray], config: SanitizeConfig = SanitizeConfig(),
             *, detector: Detector | DetectorConfig = DetectorConfig(),
             workdir: str | pathlib.Path | None = None,
             mesh: jax.sharding.Mesh | None = None,
             on_round_end: Callable[[int, dict], None] | None = None,
             keep_rounds: bool = False,
             flag_after_round: Callable[[Any], np.ndarray] | None = None) -> tuple[dict, dict]:
  """Rounds of classify -> align -> head-wise fine-tune -> re-measure.

  suspect_inputs: encoded inputs believed triggered (input_ids, attention_mask,
  optional token_type_ids, special_mask, prompt_lengths; 'labels' only with
  importance_labels='given'). clean_data: encoded clean training rows (labels,
  or loss_mask with loss='causal_lm'). detector: the calibrated detector whose
  flags define "still anomalous", or a DetectorConfig to calibrate it on up to
  its `calibration_size` clean inputs. flag_after_round(params) -> [n] bool: which
  inputs are still anomalous after a round (default: the detector's flags of
  suspect_inputs; a decoder's defense can re-read the answers of the suspects or
  of flagged prompts kept out of them, `pipeline_lm.collapse_flagger`).
  on_round_end(round, report) runs after each round's checkpoint. Returns
  (params, report).

  Example, one round on a tiny random BERT: 8 suspects, 16 clean labelled rows
  (a real run also fine-tunes: drop `stages`, see FineTuning):
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = np.random.default_rng(0).integers(3, 64, (16, 6)); ids[:, 0] = 1  # [CLS] first
    >>> params = model.init(jax.random.key(0), ids[:2])["params"]
    >>> clean = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids[:, 1] % 2}
    >>> suspects = {k: v[:8] for k, v in clean.items() if k != "labels"}
    >>> config = SanitizeConfig(classify=HeadClassification(view="cls_row"), stages=("align",),
    ...                         align=Alignment(steps=2, batch_size=8),
    ...                         stopping=Stopping(stop="fixed", max_rounds=1))
    >>> out, report = sanitize(model, params, suspects, clean, config,
    ...                        detector=DetectorConfig(view="cls_row", calibration_size=16))
    >>> report["stopped"], sum(report["rounds"][0]["counts"].values())  # 2 x 4 heads
    ('max_rounds', 8)
  """
  mesh = mesh or parallel.data_mesh()
  if isinstance(suspect_inputs, dict) and len(suspect_inputs.get("input_ids", ())) == 0:
    raise InputError("sanitize: suspect_inputs is empty (none were given or flagged); "
                     "lower the detector's threshold or pass oracle suspects.")
  validation.batch_inputs(model.config, suspect_inputs, where="sanitize: suspect_inputs")
  validation.batch_inputs(model.config, clean_data, where="sanitize: clean_data")
  by_class = config.stopping.flag == "target_class" and flag_after_round is None
  if by_class and config.finetune.loss != "classification":
    raise InputError("Stopping.flag='target_class' reads a classifier's predicted class; "
                     f"this run fine-tunes with loss={config.finetune.loss!r}: use "
                     "flag='detector' or pass flag_after_round.")
  workdir = pathlib.Path(workdir) if workdir else None
  if isinstance(detector, DetectorConfig):
    detector = calibrated_detector(
        model, params, {k: v[:detector.calibration_size] for k, v in clean_data.items()},
        detector, batch_size=config.score_batch_size, mesh=mesh)
  report = {"config": dataclasses.asdict(config), "detector": dataclasses.asdict(detector),
            "rounds": [], "stopped": None}
  if by_class:  # of the parameters given, before any round (also when resuming)
    target = target_class(model, params, suspect_inputs, config, mesh)
  ckpt = Checkpointer(workdir / "rounds", max_to_keep=None if keep_rounds else 2
                      ) if workdir else None
  if ckpt is not None and ckpt.latest_step() is not None:
    params, meta = ckpt.restore(target=params)
    report = meta["report"]
    # The stop is decided again under this call's config: a finished run given
    # more rounds (or stop="fixed") goes on from its last round.
    report["stopped"] = _stop_reason(report["rounds"][-1], config.stopping)
    logging.info("sanitize: resumed after round %d from %s (%s).", len(report["rounds"]),
                 workdir, report["stopped"] or "going on")
  if by_class:
    report["target_class"] = target
  while report["stopped"] is None:
    k = len(report["rounds"])
    heads = classify(model, params, suspect_inputs, config, mesh)
    entry = {"round": k, "counts": class_counts(heads["labels"]),
             **{name: np.asarray(v).tolist() for name, v in heads.items()}}
    if not (heads["labels"] == HeadClass.SAFE).any() and "align" in config.stages:
      entry["note"] = _EMPTY_SAFE_SET
    else:
      repair = config.finetune.when == "repair" and "align" in config.stages
      if repair:
        entry["clean_accuracy_before_align"] = task_accuracy(model, params, clean_data,
                                                              config, mesh)
      if "align" in config.stages:
        params, entry["align_loss"] = align(model, params, suspect_inputs, heads["labels"],
                                            config, mesh, k)
      if repair:
        entry["clean_accuracy_after_align"] = task_accuracy(model, params, clean_data,
                                                             config, mesh)
        entry["finetuned"] = (entry["clean_accuracy_before_align"]
                              - entry["clean_accuracy_after_align"]
                              > config.finetune.repair_tolerance)
      if "finetune" in config.stages and entry.get("finetuned", True):
        params, entry["finetune_loss"] = finetune(model, params, clean_data, heads["labels"],
                                                  config, mesh, k, workdir)
      if flag_after_round is not None:
        entry["flagged_fraction"] = float(np.mean(flag_after_round(params)))
      elif by_class:
        entry["flagged_fraction"] = float(np.mean(
            predictions(model, params, suspect_inputs, config, mesh) == report["target_class"]))
      else:
        scores = scores_of(model, params, suspect_inputs, detector.view, detector.statistic,
                           batch_size=config.score_batch_size, mesh=mesh)
        entry.update(suspect_score_mean=float(np.nanmean(scores)) if np.isfinite(scores).any()
                     else float("nan"), nonfinite_scores=int((~np.isfinite(scores)).sum()),
                     flagged_fraction=float(detector.flag(scores).mean()))
    report["stopped"] = _stop_reason(entry, config.stopping)
    report["rounds"].append(entry)
    logging.info("sanitize round %d: %s, suspects flagged %.3f", k, entry["counts"],
                 entry.get("flagged_fraction", float("nan")))
    params = jax.device_get(params)
    if ckpt is not None:
      ckpt.save(k + 1, params, metadata={"report": report})
      ckpt.wait_until_finished()
      # The round's checkpoint supersedes its fine-tune's (parameters and Adam
      # moments: three copies of the model, per round).
      shutil.rmtree(workdir / f"finetune_round{k}", ignore_errors=True)
    if on_round_end is not None:
      on_round_end(k, report)
  if ckpt is not None:
    ckpt.close()
  return params, report
