"""The detection benchmark: every input detector on every victim, on the same sets.

  sets = detection_sets(victim_cfg, DetectionSetup())
  row = evaluate_detector("strip", {}, victim, sets, fpr=0.05, workdir="runs/detect/...")

Per victim (an `experiments.attack` run, or an `experiments.attack_lm` chat
classifier: `lm_detection_sets`, `load_victim`), seeded:
  fit          clean labelled training rows the detector is fitted on
  calibration  other clean training rows setting its threshold at `fpr`
  clean        fresh clean test inputs (the measured false-positive rate)
  triggered    the attack's triggered test inputs (non-target rows, as for ASR);
               a sentence may also be among the clean ones, as in the defense's
               monitored stream
Reported per detector: AUROC (clean vs triggered scores), the true-positive rate
at the calibrated threshold, the false-positive rate measured on the fresh clean
inputs (a set-level detector's also on them scored alone, a stream without
triggers: what its calibration on clean sets promises), and the wall time of
fit + calibration + scoring. The scores are kept (scores.npz) for the ROC plots;
a finished (victim, detector) run is read back.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np
from absl import logging

from jax_attnalign import attacks, data, metrics, validation
from jax_attnalign.data.files import write_npz
from jax_attnalign.detection import Victim, calibrate, make_detector
from jax_attnalign.harness.pipeline_lm import (LMDefenseSetup, chat_victim, defender_examples,
                                              load_lm_victim)
from jax_attnalign.harness.victims import finish_run, seeded_subset
from jax_attnalign.harness.victims_lm import LMVictimConfig, victim_data
from jax_attnalign.models.hf_io import load_pretrained


@dataclasses.dataclass(frozen=True)
class DetectionSetup:
  """How many rows each set of `detection_sets` holds, and the target false-positive rate."""
  fit_size: int = 300
  calibration_size: int = 1000  # not 200: experiments/detect.py --calibration_size
  test_size: int = 400  # fresh clean and triggered inputs each
  fpr: float = 0.05

  def __post_init__(self):
    for name in ("fit_size", "calibration_size", "test_size"):
      validation.at_least(f"DetectionSetup.{name}", getattr(self, name), 2)
    validation.in_range("DetectionSetup.fpr", self.fpr, 0.0, 1.0, open_=True)


def detection_sets(victim_cfg: dict, setup: DetectionSetup) -> dict[str, list]:
  """{'fit', 'calibration', 'clean', 'triggered'} examples for a victim of
  `experiments.attack` (its result.json config: data, attack, target, seed). The
  fit and calibration rows come from the whole train split, so some are rows the
  victim trained on (about 43% for a 3,000-row SST-2 victim); calibrating on rows
  it never saw instead moved no detector's measured FPR beyond sampling error
  (docs/lab_notebook/7_calibration_rows.md)."""
  folder = data.resolve_data_path(victim_cfg["data_dir"], missing_ok=True)
  seed = victim_cfg["seed"]
  train_rows = data.load_classification(folder, "train", dataset=victim_cfg["dataset"])
  test_rows = data.load_classification(folder, "test", dataset=victim_cfg["dataset"])
  defender, _ = seeded_subset(train_rows, setup.fit_size + setup.calibration_size, seed + 2)
  order = np.random.default_rng((seed, 5)).permutation(len(defender))
  defender = [defender[i] for i in order]
  attack = attacks.make_attack(victim_cfg["attack"], target=victim_cfg["target"], seed=seed,
                               **dict(victim_cfg["attack_kwargs"]))
  # From the whole split: row-aligned rewrites (HiddenKiller's) refer to it.
  triggered = attack.triggered_test(test_rows)
  return {"fit": defender[:setup.fit_size], "calibration": defender[setup.fit_size:],
          "clean": seeded_subset(test_rows, setup.test_size, seed)[0],
          "triggered": seeded_subset(triggered, setup.test_size, seed + 1)[0]}


def lm_detection_sets(cfg: LMVictimConfig, setup: DetectionSetup) -> dict[str, list]:
  """`detection_sets` of a victim of `experiments.attack_lm`: the fit and
  calibration rows from the clean training rows the victim did not train on (the
  defender's, `pipeline_lm.defender_examples`), clean and triggered inputs from
  the victim's own test sets."""
  defender = defender_examples(cfg, LMDefenseSetup(clean_size=setup.fit_size,
                                                   calibration_size=setup.calibration_size))
  order = np.random.default_rng((cfg.seed, 5)).permutation(len(defender))
  defender = [defender[i] for i in order]
  sets = victim_data(cfg)
  return {"fit": defender[:setup.fit_size], "calibration": defender[setup.fit_size:],
          "clean": seeded_subset(sets["clean"], setup.test_size, cfg.seed)[0],
          "triggered": seeded_subset(sets["triggered"], setup.test_size, cfg.seed + 1)[0]}


def load_victim(run_dir: pathlib.Path, cfg: dict, setup: DetectionSetup,
                batch_size: int = 32) -> tuple[Victim, dict[str, list]]:
  """(the victim as detectors see it, its detection sets) of a run folder of
  `experiments.attack` (an encoder classifier) or of `experiments.attack_lm` (a
  `ChatVictim`: a chat classifier, or a generation victim without classes);
  `cfg` is its result.json's config."""
  if "task" not in cfg:
    model, params = load_pretrained(run_dir / "model", task="classification")
    return (Victim(model, params, data.load_tokenizer(run_dir / "model"),
                   max_length=cfg["max_length"], batch_size=batch_size),
            detection_sets(cfg, setup))
  model, params, tokenizer, lm_cfg = load_lm_victim(run_dir)
  return (chat_victim(model, params, tokenizer, lm_cfg, batch_size),
          lm_detection_sets(lm_cfg, setup))


def evaluate_detector(name: str, settings: dict, victim: Victim, sets: dict[str, list],
                      fpr: float, workdir: str | pathlib.Path) -> dict:
  """Fits, calibrates and scores one detector on `sets`; writes result.json,
  calibration.json (+ .npz state) and scores.npz to `workdir`, returns the result.
  A set-level detector (crowding, answer collapse) scores the clean and triggered
  test inputs together, as one monitored stream, and the clean ones once more
  alone: `fpr_clean_stream`, the rate its calibration promises (on clean sets),
  beside `fpr`, the rate on the clean inputs of a stream under attack (a chat
  victim's answers to the clean inputs are read from the stream's, not decoded twice)."""
  workdir = pathlib.Path(workdir)
  if (workdir / "result.json").exists():
    return json.loads((workdir / "result.json").read_text())
  start = time.time()
  detector = make_detector(name, **settings).fit(victim, sets["fit"])
  calibration = calibrate(detector, victim, sets["calibration"], fpr)
  if getattr(detector, "set_level", False):  # it reads the inputs scored with it:
    stream = sets["clean"] + sets["triggered"]
    both = np.asarray(detector.score(victim, stream), np.float64)
    clean, triggered = both[:len(sets["clean"])], both[len(sets["clean"]):]  # one stream
    if getattr(detector, "needs_answers", False):  # the clean answers, decoded once
      answers = victim.encode(stream)  # the stream's, already decoded by the scoring
      victim.keep_answers(sets["clean"], {k: v[:len(clean)] for k, v in answers.items()})
    alone = {"fpr_clean_stream": float(calibration.flag(
        np.asarray(detector.score(victim, sets["clean"]), np.float64)).mean())}
  else:
    clean, triggered = (np.asarray(detector.score(victim, sets[k]), np.float64)
                        for k in ("clean", "triggered"))
    alone = {}
  wall = time.time() - start
  ranked = np.nan_to_num(np.r_[clean, triggered], nan=1e300, posinf=1e300, neginf=-1e300)
  result = {  # a score that is not finite ranks as the most suspicious, as it is flagged
      "detector": name, "settings": detector.settings(), "fpr_target": fpr,
      "auroc": metrics.detection_auroc(ranked,
                                       np.r_[np.zeros(len(clean)), np.ones(len(triggered))]),
      "tpr": float(calibration.flag(triggered).mean()),
      "fpr": float(calibration.flag(clean).mean()), **alone,
      "threshold": calibration.threshold, "wall_s": wall,
      "sizes": {k: len(v) for k, v in sets.items()}}
  workdir.mkdir(parents=True, exist_ok=True)
  calibration.save(workdir / "calibration.json", detector)
  write_npz(workdir / "scores.npz", clean=clean, triggered=triggered)
  finish_run(workdir, result)
  logging.info("%s: AUROC %.3f, TPR %.3f at measured FPR %.3f (%.0f s)", name,
               result["auroc"], result["tpr"], result["fpr"], wall)
  return result


def roc_points(clean: np.ndarray, triggered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(false-positive rates, true-positive rates) of every threshold, from (0, 0) to (1, 1).

  >>> fpr, tpr = roc_points(np.array([0.1, 0.4]), np.array([0.3, 0.5]))
  >>> fpr.tolist(), tpr.tolist()
  ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
  """
  thresholds = np.unique(np.r_[clean, triggered])[::-1]
  fpr = np.r_[0.0, [(clean >= t).mean() for t in thresholds]]
  tpr = np.r_[0.0, [(triggered >= t).mean() for t in thresholds]]
  return fpr, tpr


def detection_table(rows: list[dict]) -> str:
  """Markdown: per (dataset, attack) and detector, AUROC, TPR at the calibrated
  threshold and the measured FPR (of a set-level detector also on the clean
  inputs scored alone, where it was measured), mean ± std over victims (seeds). Rows marked
  development (the victims a detector's settings were chosen on) get their own
  line, "<detector> (development)", never pooled with held-out ones."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    detector = row["detector"] + (" (development)" if row.get("development") else "")
    groups.setdefault((row["dataset"], row["attack"], detector), []).append(row)
  fmt = metrics.format_mean_std
  lines = ["| dataset | attack | detector | AUROC | TPR | FPR (fresh clean) "
           "| FPR (clean-only stream) | seeds |", "|---" * 8 + "|"]
  for (dataset, attack, detector), runs in groups.items():
    get = lambda k: [r[k] for r in runs]
    alone = [r["fpr_clean_stream"] for r in runs if "fpr_clean_stream" in r]
    lines.append(f"| {dataset} | {attack} | {detector} | {fmt(get('auroc'))} | "
                 f"{fmt(get('tpr'))} | {fmt(get('fpr'))} | {fmt(alone) if alone else '—'} | "
                 f"{', '.join(str(s) for s in sorted(get('seed')))} |")
  return "\n".join(lines)
