"""Restarts of the sanitisation, with a choice among them that needs no trigger labels.

  params, report = sanitize_restarts(model, params, suspects, clean, watch, holdout,
                                     SanitizeConfig(restarts=3), detector=detector)

The sanitiser is stochastic (the alignment's batch order, the fine-tune's
shuffling): on a 2,000-sentence SST-2 BadNets victim its seed alone moved the
ASR left from 0.373 to 0.228 (README). `sanitize_restarts` runs `sanitize` with
seeds `seed, seed + 1, ...` and keeps one run, judged on two things the
defender has:
  watch:   unlabelled inputs the detector flagged (all flags, not only the
           suspects). The *target class* is the class the backdoored model
           gave most of them; a run's score is the share of watched inputs it
           still puts there (an input that still reaches the target class).
  holdout: labelled clean rows no step trains on (the detector's calibration
           rows); a run is eligible when its accuracy there is at most
           `restart_tolerance` below the backdoored model's.
The eligible run with the lowest share wins (ties: the earliest); if none is
eligible, the run with the best holdout accuracy. On 22 saved sanitisations
of four BadNets victims the share tracked the held-out ASR within 0.01-0.11
and, among the eligible runs, put the lowest-ASR run first (or one within 0.02
of it) on each victim (README).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np
from absl import logging

from jax_attnalign import parallel, train
from jax_attnalign.defense.detector import Detector
from jax_attnalign.defense.sanitize import SanitizeConfig, sanitize, task_accuracy


def _predictions(model, params, arrays: dict[str, np.ndarray], config: SanitizeConfig,
                 mesh: jax.sharding.Mesh) -> np.ndarray:
  return train.predict_logits(model, params, arrays, batch_size=config.score_batch_size,
                              mesh=mesh).argmax(-1)


def sanitize_restarts(model, params, suspect_inputs: dict[str, np.ndarray],
                      clean_data: dict[str, np.ndarray], watch: dict[str, np.ndarray],
                      holdout: dict[str, np.ndarray], config: SanitizeConfig = SanitizeConfig(),
                      *, detector: Detector | None = None,
                      workdir: str | pathlib.Path | None = None,
                      mesh: jax.sharding.Mesh | None = None) -> tuple[dict, dict]:
  """`config.restarts` runs of `sanitize`; returns (the chosen params, its report).

  suspect_inputs, clean_data, detector: as for `sanitize`. watch: encoded
  unlabelled inputs (the detector's flags); holdout: encoded labelled clean rows
  (classification). The report is the chosen run's, plus 'restarts' (per run:
  seed, watched_target_share, holdout_accuracy, rounds, stopped), 'chosen' (its
  index), 'target_class' and 'holdout_accuracy_before'. With `workdir`, run 0
  checkpoints there and run k in workdir/restart<k>, so an interrupted call
  resumes.
  """
  if config.loss != "classification":
    raise ValueError("sanitize_restarts judges runs by predicted classes, so it needs "
                     f"loss='classification' (got {config.loss!r}); run `sanitize` "
                     "once for causal LMs.")
  if len(watch.get("input_ids", ())) == 0 or len(holdout.get("input_ids", ())) == 0:
    raise ValueError("sanitize_restarts needs watched inputs and holdout rows (both "
                     "were empty); pass the detector's flags and clean labelled rows.")
  mesh = mesh or parallel.data_mesh()
  workdir = pathlib.Path(workdir) if workdir else None
  target = int(np.bincount(_predictions(model, params, watch, config, mesh)).argmax())
  before = task_accuracy(model, params, holdout, config, mesh)
  floor = before - config.restart_tolerance
  runs, best = [], None
  for k in range(config.restarts):
    run_config = dataclasses.replace(config, seed=config.seed + k)
    run_dir = None if workdir is None else (workdir if k == 0 else workdir / f"restart{k}")
    out, report = sanitize(model, params, suspect_inputs, clean_data, run_config,
                           detector=detector, workdir=run_dir, mesh=mesh)
    share = float(np.mean(_predictions(model, out, watch, config, mesh) == target))
    accuracy = task_accuracy(model, out, holdout, config, mesh)
    runs.append(dict(seed=run_config.seed, watched_target_share=share,
                     holdout_accuracy=accuracy, rounds=len(report["rounds"]),
                     stopped=report["stopped"]))
    logging.info("restart %d: watched inputs on class %d %.3f, holdout accuracy %.3f "
                 "(floor %.3f)", k, target, share, accuracy, floor)
    key = (0, share) if accuracy >= floor else (1, -accuracy)
    if best is None or key < best[0]:
      best = (key, k, out, report)
  _, chosen, params, report = best
  return params, {**report, "restarts": runs, "chosen": chosen, "target_class": target,
                  "holdout_accuracy_before": before}
