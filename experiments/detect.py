r"""Detection benchmark: every input detector on every victim (issue 21's table).

For each backdoored victim under --victims_dirs (`experiments.attack` workdirs,
and `experiments.attack_lm` ones: SmolLM2 chat classifiers and generation
victims, read as `detection.chat.ChatVictim`; on generation victims, which have
no classes, STRIP and RAP are skipped and the "dataset" column is the task;
answer collapse reads generation victims only) and
each detector of --detectors (`jax_attnalign.detection.DETECTORS`),
fits the detector on clean training rows, calibrates it at --fpr on other clean
rows, and scores fresh clean and triggered test inputs
(`jax_attnalign.harness.detection`). Settings are each detector's defaults,
except RAP's protected class (the victim's target, which RAP assumes known) and,
on chat classifiers, RAP's word (`chat.RAP_WORD`: "tq" is two SmolLM2 tokens) and
the paper detector's view and statistic (those of experiments/configs/defend_lm.py,
chosen on a tuning victim). Writes per-run result.json, calibration and
scores under <workdir>/<dataset>/<victim>/<detector>/, then detect.json, detect.md (AUROC,
TPR at the calibrated threshold, measured FPR; mean ± std over seeds) and one
ROC plot per dataset and attack (all seeds' scores pooled). Runs of
--development victims (those a detector's settings were chosen on) stay apart in
their own table rows and out of the plots. Finished runs are
read back, and the summary covers every victim of --victims_dirs with finished runs
of these detectors (earlier calls' too), so the benchmark can be run in parts.

  python -m experiments.detect --victims_dirs runs/enc_sst2 --detectors paper,strip,dan \
      --workdir runs/detect
  python -m experiments.detect --victims_dirs runs/lm_sst2 --fit_size 200 \
      --test_size 200 --batch_size 8 --workdir runs/detect_lm
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import tqdm
from absl import app, flags, logging

import experiments
from experiments.configs import defend_lm as lm_config
from jax_attnalign import plots
from jax_attnalign.data.files import write_json
from jax_attnalign.detection import DETECTORS, needs_answers, needs_classes
from jax_attnalign.detection.chat import RAP_WORD
from jax_attnalign.harness import reporting
from jax_attnalign.harness.detection import (DetectionSetup, detection_table, evaluate_detector,
                                             load_victim, roc_points)

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiments)  # --data_root and other shared flags in --help
flags.DEFINE_list("victims_dirs", ["workdir/attack"], "experiments.attack workdirs.")
flags.DEFINE_list("attacks", [], "Only these attacks (default: every victim found).")
flags.DEFINE_list("seeds", [], "Only victims of these seeds (default: all).")
flags.DEFINE_list("detectors", sorted(DETECTORS), "Detectors, of jax_attnalign.detection.")
flags.DEFINE_integer("fit_size", DetectionSetup.fit_size,
                     "Clean training rows each detector is fitted on.", lower_bound=2)
flags.DEFINE_integer("calibration_size", DetectionSetup.calibration_size,
                     "Clean training rows setting the threshold (a 95% quantile of 200 "
                     "rows misses its rate by about 0.015, crowding's by more: "
                     "docs/lab_notebook/7_calibration_rows.md, 11_crowding_calibration.md).",
                     lower_bound=2)
flags.DEFINE_integer("test_size", DetectionSetup.test_size,
                     "Fresh clean and triggered test inputs each.", lower_bound=2)
flags.DEFINE_float("fpr", DetectionSetup.fpr, "Target false-positive rate of the calibration.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("batch_size", 32, "Inputs per jitted batch.", lower_bound=1)
flags.DEFINE_bool("development", False,
                  "These victims chose the detectors' settings: their runs are marked "
                  "development and kept apart from held-out ones in detect.md and the "
                  "README, so that no reported mean pools them.")
flags.DEFINE_string("workdir", "workdir/detect", "Output folder.")


def settings(name: str, cfg: dict) -> dict:
  """The detector's settings on this victim (module docstring)."""
  if name == "rap":
    return {"protected": cfg["target"], **({"word": RAP_WORD} if "task" in cfg else {})}
  if name == "paper" and "task" in cfg:
    return dict(lm_config.DETECTOR)
  return {}


def dataset_of(cfg: dict) -> str:
  """A classifier's dataset; a generation victim's task (refusal, negsentiment)."""
  return cfg["dataset"] if cfg.get("task", "classification") == "classification" else cfg["task"]


def model_of(cfg: dict) -> str:
  """The victim's base model: its checkpoint path, or the bundled one's name."""
  return cfg["model"] or ("SmolLM2" if "task" in cfg else "MiniLM")


def finished_rows(victims, workdir: pathlib.Path) -> list[dict]:
  """A row per victim x detector of FLAGS.detectors finished under workdir."""
  return [{"victim": run, "model": model_of(cfg), "dataset": dataset_of(cfg),
           "attack": cfg["attack"],
           "seed": cfg["seed"], **json.loads(path.read_text())}
          for run, _, cfg in victims for name in FLAGS.detectors
          if (path := workdir / run / name / "result.json").is_file()]


def write_summary(rows: list[dict], workdir: pathlib.Path) -> str:
  table = (f"Detection on each victim's {reporting.count_range(r['sizes']['clean'] for r in rows)}"
           f" fresh clean and {reporting.count_range(r['sizes']['triggered'] for r in rows)} "
           f"triggered test inputs; threshold calibrated at FPR {FLAGS.fpr:g} on "
           f"{reporting.count_range(r['sizes']['calibration'] for r in rows)} clean training "
           "rows; mean ± std over seeds\n\n" + detection_table(rows))
  write_json(workdir / "detect.json", rows)
  (workdir / "detect.md").write_text(table + "\n")
  for dataset, attack in sorted({(r["dataset"], r["attack"]) for r in rows}):
    curves = {}
    for name in FLAGS.detectors:
      runs = [r for r in rows if (r["dataset"], r["attack"], r["detector"]) ==
              (dataset, attack, name) and not r.get("development")]
      if not runs:  # STRIP and RAP on a generation victim, answer collapse on a classifier
        continue
      scores = [np.load(workdir / r["victim"] / name / "scores.npz") for r in runs]
      curves[name] = (*roc_points(np.concatenate([s["clean"] for s in scores]),
                                  np.concatenate([s["triggered"] for s in scores])),
                      float(np.mean([r["auroc"] for r in runs])))
    plots.plot_roc_curves(curves, workdir / f"roc_{dataset}_{attack}.png",
                          title=f"{attack} ({dataset})", fpr_target=FLAGS.fpr)
  return table


def main(argv):
  del argv
  experiments.use_data_root()
  workdir = pathlib.Path(FLAGS.workdir)
  setup = DetectionSetup(FLAGS.fit_size, FLAGS.calibration_size, FLAGS.test_size, FLAGS.fpr)
  victims = reporting.grid_victims(FLAGS.victims_dirs, FLAGS.attacks, FLAGS.seeds)
  if len(models := sorted({model_of(cfg) for _, _, cfg in victims})) > 1:
    raise ValueError(f"--victims_dirs hold victims of several models ({', '.join(models)}); "
                     "their tables and ROC plots would mix: run each model's victims with "
                     "its own --workdir.")
  for run, run_dir, cfg in tqdm.tqdm(victims, desc="victims"):
    victim, sets = load_victim(run_dir, cfg, setup, FLAGS.batch_size)
    for name in FLAGS.detectors:
      if not victim.num_classes and needs_classes(name):
        logging.info("%s: %s skipped (it reads class probabilities)", run, name)
        continue
      if victim.num_classes and needs_answers(name):
        logging.info("%s: %s skipped (it reads a generation victim's answers)", run, name)
        continue
      result = evaluate_detector(name, settings(name, cfg), victim, sets, setup.fpr,
                                 workdir / run / name)
      if FLAGS.development and not result.get("development"):
        (workdir / run / name / "result.json").write_text(
            json.dumps({**result, "development": True}, indent=1))
  # The summary covers every victim of the folders these detectors finished on,
  # earlier calls' too, so a benchmark run in parts (--attacks, --seeds) adds up.
  print(write_summary(finished_rows(reporting.grid_victims(FLAGS.victims_dirs), workdir),
                      workdir))


if __name__ == "__main__":
  app.run(main)
