"""Restarts of the sanitisation, kept or averaged by a rule that needs no trigger labels.

  params, report = sanitize_restarts(model, params, suspects, clean, watch, holdout,
                                     SanitizeConfig(), restarts=RestartConfig(runs=3),
                                     detector=detector)

The sanitiser is stochastic (the alignment's batch order, the fine-tune's
shuffling): on a 2,000-sentence SST-2 BadNets victim its seed alone moved the
ASR left from 0.373 to 0.228 (README). `sanitize_restarts` runs `sanitize` with
seeds `seed, seed + 1, ...` and keeps one run (or an average of several),
judged on two things the defender has:
  watch:   unlabelled inputs the detector flagged (all flags, not only the
           suspects). The *target class* is the class the backdoored model
           gave most of them; a run's score is the share of watched inputs it
           still puts there (an input that still reaches the target class).
  holdout: labelled clean rows no step trains on (the detector's calibration
           rows); a run is eligible when its accuracy there is at most
           `RestartConfig.tolerance` below the backdoored model's.
The eligible run with the lowest share comes first (ties: the earliest); if none
is eligible, the run with the best holdout accuracy. On 22 saved sanitisations
of four BadNets victims the share tracked the held-out ASR within 0.01-0.11
and, among the eligible runs, put the lowest-ASR run first (or one within 0.02
of it) on each victim (README).

Rounds are candidates too with `every_round`: a run's later rounds can put
more of the backdoor back than they remove (on a 2,000-sentence SST-2 BadNets
victim one run's held-out ASR went 0.440 -> 0.313 -> 0.607 over three rounds,
README), so every round of every run is judged, not only the last.

With `soup` (the default) the candidates are then averaged greedily, the
"greedy soup" of Wortsman et al. (2022, arXiv 2203.05482): in the order of the
same judgement, each candidate joins the weight average if the average with it
is judged strictly better (eligible and a lower share, or more holdout accuracy
while none is eligible); the first candidate alone is the fallback. All runs
start from the same backdoored weights, which is what makes their average a
model. The candidates' parameters are held in memory until the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jax_attnalign import parallel
from jax_attnalign.checkpoint import Checkpointer
from jax_attnalign.defense import checks
from jax_attnalign.defense.detector import Detector, DetectorConfig
from jax_attnalign.defense.sanitize import (SanitizeConfig, predictions, sanitize, target_class,
                                            task_accuracy)


@dataclasses.dataclass(frozen=True)
class RestartConfig:
  """Whole runs of `sanitize` with seeds seed, seed + 1, ..., and how one (or a
  greedy weight average of several) is kept, by a rule that needs no trigger labels.

  >>> RestartConfig(runs=3).soup, RestartConfig().tolerance
  (True, 0.02)
  """
  runs: int = 1
  tolerance: float = 0.02  # holdout accuracy a kept run may lose
  soup: bool = True  # average the runs greedily when that is judged better
  # Judge every round of every run (each a candidate to keep or average), not
  # only each run's last: rounds do not lower the ASR monotonically (README).
  every_round: bool = False

  def __post_init__(self):
    checks.at_least("RestartConfig.runs", self.runs, 1)
    checks.finite("RestartConfig.tolerance", self.tolerance)
    checks.choice("RestartConfig.soup", self.soup, (True, False))
    checks.choice("RestartConfig.every_round", self.every_round, (True, False))


def _average(trees: list):
  """The leaf-wise mean of parameter trees, accumulated in float32, in their dtype."""
  return jax.tree_util.tree_map(
      lambda *xs: jnp.mean(jnp.stack([x.astype(jnp.float32) for x in xs]), 0).astype(xs[0].dtype),
      *trees)


def _run(model, params, suspect_inputs, clean_data, config: SanitizeConfig,
         every_round: bool, detector: Detector | DetectorConfig,
         run_dir: pathlib.Path | None, mesh: jax.sharding.Mesh
         ) -> tuple[list, list[int], dict]:
  """One run of `sanitize`: (the params judged, their round indices, its report).

  Its last round's params, or with `every_round` every round's, read back from
  the run's checkpoints (a temporary directory without `run_dir`); a round whose
  checkpoint an earlier call did not keep is skipped with a warning.
  """
  if not every_round:
    out, report = sanitize(model, params, suspect_inputs, clean_data, config,
                           detector=detector, workdir=run_dir, mesh=mesh)
    return [out], [len(report["rounds"]) - 1], report
  with contextlib.ExitStack() as stack:
    if run_dir is None:
      run_dir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
    _, report = sanitize(model, params, suspect_inputs, clean_data, config, detector=detector,
                         workdir=run_dir, mesh=mesh, keep_rounds=True)
    with Checkpointer(run_dir / "rounds", max_to_keep=None) as ckpt:
      steps = ckpt.steps()
      missing = sorted(set(range(1, len(report["rounds"]) + 1)) - set(steps))
      if missing:
        logging.warning("every_round: rounds %s of %s were saved without keep_rounds and "
                        "are not judged.", [s - 1 for s in missing], run_dir)
      return ([ckpt.restore(step, target=params)[0] for step in steps],
              [step - 1 for step in steps], report)


def sanitize_restarts(model, params, suspect_inputs: dict[str, np.ndarray],
                      clean_data: dict[str, np.ndarray], watch: dict[str, np.ndarray],
                      holdout: dict[str, np.ndarray], config: SanitizeConfig = SanitizeConfig(),
                      *, restarts: RestartConfig = RestartConfig(),
                      detector: Detector | DetectorConfig = DetectorConfig(),
                      workdir: str | pathlib.Path | None = None,
                      mesh: jax.sharding.Mesh | None = None) -> tuple[dict, dict]:
  """`restarts.runs` runs of `sanitize`; returns (the kept params, a report).

  suspect_inputs, clean_data, detector: as for `sanitize`. watch: encoded
  unlabelled inputs (the detector's flags); holdout: encoded labelled clean rows
  (classification). The candidates are each run's last round, or with
  `restarts.every_round` every round of every run. The report is the run's of the
  first-ranked candidate, plus 'restarts' (per run: seed, rounds, stopped, and
  its last round's watched_target_share and holdout_accuracy), 'candidates' (per
  candidate: run, round, watched_target_share, holdout_accuracy; without
  `every_round` candidate k is run k), 'chosen' (the first-ranked candidate's
  index), 'soup' (the candidates averaged into the returned params: [chosen] alone
  when no average was better or `restarts.soup` is off), 'soup_trials' (each
  average tried: members, share, accuracy, kept), 'target_class',
  'holdout_accuracy_before' and 'restart_config'. With `workdir`, run 0
  checkpoints there and run k in workdir/restart<k>, so an interrupted call resumes.

  Example, two one-round runs on a tiny random BERT (see `sanitize`'s example):
    >>> from jax_attnalign import ModelConfig, build_model
    >>> from jax_attnalign.defense import Alignment, HeadClassification, Stopping
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = np.random.default_rng(0).integers(3, 64, (16, 6)); ids[:, 0] = 1  # [CLS] first
    >>> params = model.init(jax.random.key(0), ids[:2])["params"]
    >>> rows = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids[:, 1] % 2}
    >>> flagged = {k: v[:8] for k, v in rows.items() if k != "labels"}
    >>> config = SanitizeConfig(HeadClassification(view="cls_row"), Alignment(steps=2,
    ...                         batch_size=8), stopping=Stopping(stop="fixed", max_rounds=1),
    ...                         stages=("align",))
    >>> detector = DetectorConfig(view="cls_row", calibration_size=16)
    >>> out, report = sanitize_restarts(model, params, flagged, rows, flagged, rows, config,
    ...                                 restarts=RestartConfig(runs=2), detector=detector)
    >>> [c["run"] for c in report["candidates"]], report["chosen"] in report["soup"]
    ([0, 1], True)
  """
  if config.finetune.loss != "classification":
    raise ValueError("sanitize_restarts judges runs by predicted classes, so it needs "
                     f"loss='classification' (got {config.finetune.loss!r}); run "
                     "`sanitize` once for causal LMs.")
  if len(watch.get("input_ids", ())) == 0 or len(holdout.get("input_ids", ())) == 0:
    raise ValueError("sanitize_restarts needs watched inputs and holdout rows (both "
                     "were empty); pass the detector's flags and clean labelled rows.")
  mesh = mesh or parallel.data_mesh()
  workdir = pathlib.Path(workdir) if workdir else None
  target = target_class(model, params, watch, config, mesh)
  before = task_accuracy(model, params, holdout, config, mesh)
  floor = before - restarts.tolerance

  def judge(candidate) -> tuple[tuple, float, float]:
    """(sort key: lower is better, watched target share, holdout accuracy)."""
    share = float(np.mean(predictions(model, candidate, watch, config, mesh) == target))
    accuracy = task_accuracy(model, candidate, holdout, config, mesh)
    eligible = accuracy >= floor - 1e-6  # "at most tolerance below", float32 means
    return ((0, share) if eligible else (1, -accuracy)), share, accuracy

  runs, candidates, outs, keys, reports = [], [], [], [], []
  for k in range(restarts.runs):
    run_config = dataclasses.replace(config, seed=config.seed + k)
    run_dir = None if workdir is None else (workdir if k == 0 else workdir / f"restart{k}")
    round_params, rounds, report = _run(model, params, suspect_inputs, clean_data, run_config,
                                        restarts.every_round, detector, run_dir, mesh)
    for r, candidate in zip(rounds, round_params):
      key, share, accuracy = judge(candidate)
      candidates.append(dict(run=k, round=r, watched_target_share=share,
                             holdout_accuracy=accuracy))
      outs.append(candidate)
      keys.append(key)
      logging.info("restart %d round %d: watched inputs on class %d %.3f, holdout accuracy "
                   "%.3f (floor %.3f)", k, r, target, share, accuracy, floor)
    last = candidates[-1]
    runs.append(dict(seed=run_config.seed, rounds=len(report["rounds"]),
                     stopped=report["stopped"],
                     watched_target_share=last["watched_target_share"],
                     holdout_accuracy=last["holdout_accuracy"]))
    reports.append(report)
  order = sorted(range(len(outs)), key=lambda i: (keys[i], i))
  chosen, soup, soup_key, trials = order[0], [order[0]], keys[order[0]], []
  params = outs[chosen]
  for i in order[1:] if restarts.soup else ():
    members = soup + [i]
    average = _average([outs[j] for j in members])
    key, share, accuracy = judge(average)
    kept = key < soup_key
    trials.append(dict(members=sorted(members), watched_target_share=share,
                       holdout_accuracy=accuracy, kept=kept))
    logging.info("soup of candidates %s: watched inputs on class %d %.3f, holdout accuracy "
                 "%.3f%s", trials[-1]["members"], target, share, accuracy,
                 "" if kept else " (dropped)")
    if kept:
      soup, soup_key, params = members, key, average
  report = reports[candidates[chosen]["run"]]
  return params, {**report, "restart_config": dataclasses.asdict(restarts), "restarts": runs,
                  "candidates": candidates, "chosen": chosen, "soup": sorted(soup),
                  "soup_trials": trials, "target_class": target,
                  "holdout_accuracy_before": before}
