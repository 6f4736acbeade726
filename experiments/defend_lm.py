r"""Defends decoder victims, Table 2(b) and 3(b): the method and its ablation on SmolLM2.

For every backdoored victim under --victims_dir (experiments.attack_lm) and every
variant in --variants:
  detector      ours, the detector's suspects from the monitored stream
  oracle        ours, the stream's triggered prompts as suspects
  align_only    alignment only (oracle suspects)
  headwise_only head-wise fine-tuning only (oracle suspects)
  uniform_only  uniform fine-tuning only: every head at the safe rate (oracle)
  cleangen      CleanGen decoding against the victim's pretrained checkpoint (the
                paper's baseline; its settings alpha 20, k 4: baselines.CleanGenConfig)
  graceful      GraCeFul: the victim's training rows filtered on the pretrained
                checkpoint's gradients (the authors' settings), then the victim's
                recipe from that checkpoint on the kept rows
  muscle_lora   MuScleLoRA from the pretrained checkpoint on the victim's training
                rows, aligned to the defender's clean rows: the paper's scalings
                [1..9] and mu_max 0.1 (baselines.MuScleLoRAConfig), trained with
                the victim's own schedule (epochs, batch, learning rate, seed)
  fine_pruning, meft, pure
                Table 2(a)'s classifier baselines, on a chat classifier read as a
                classifier over its label words (harness.baselines_lm), with our
                fine-tuning budget (experiments/configs/defend_lm.py)
The baselines' settings are the config's `baselines` part (harness.baselines_lm).
The detector variant's suspects are the paper detector's unless
--config.setup.detector names another input detector (its rows then read
"detector (<name>)"; run it under its own --workdir). With
--config.setup.rescore=answer_collapse the rounds' stop re-reads answers instead
of the suspects' heads: the suspects' (rows "... (answer_collapse stop)"), or
with --config.setup.watch_share those of a share of the flagged prompts kept out
of the suspects (rows "... (answer_collapse stop on 0.25 kept out)"); each under
its own --workdir. --config experiments/configs/defend_lm.py:collapse sets all
three, for generation victims. Each run measures the held-out ASR and CA
(classification) or clean utility (generation) before and after. Writes per-run
result.json and the sanitised checkpoint (with tokenizer), and
defend_lm.json/.md/.png (mean ± std over seeds). Interrupted runs resume.

  python -m experiments.defend_lm --victims_dir runs/lm_sst2 --workdir runs/defend_lm
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

import experiments
from jax_attnalign import plots
from jax_attnalign.data.files import write_json
from jax_attnalign.defense import HeadRates
from jax_attnalign.harness import reporting, reporting_lm
from jax_attnalign.harness.baselines_lm import (LM_BASELINES, VICTIM_SCHEDULE,
                                                defend_lm_with_baseline)
from jax_attnalign.harness.configs import baseline_config, detector_config, sanitize_config
from jax_attnalign.harness.pipeline_lm import LMDefenseSetup, PreparedLMVictim, defend_lm_victim

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiments)  # --data_root and other shared flags in --help
config_flags.DEFINE_config_file("config", "experiments/configs/defend_lm.py",
                                "Defense config (ml_collections).")
flags.DEFINE_string("victims_dir", "workdir/attack_lm", "experiments.attack_lm's workdir.")
flags.DEFINE_list("attacks", [], "Only these attacks (default: every backdoored victim).")
flags.DEFINE_list("seeds", [], "Only victims of these seeds (default: all).")
flags.DEFINE_list("variants", ["detector", "oracle"],
                  "detector, oracle, align_only, headwise_only, uniform_only, cleangen, "
                  "graceful, muscle_lora; chat classifiers also fine_pruning, meft, pure.")

BASELINE_VARIANTS = tuple(LM_BASELINES)
flags.DEFINE_string("workdir", "workdir/defend_lm", "Output folder.")


def variants(config) -> dict:
  """{name: (suspects, SanitizeConfig)}."""
  full = sanitize_config(config.sanitize)
  uniform = dataclasses.replace(
      full.finetune, rates=HeadRates(*(full.finetune.rates.safe,) * 3))
  return {"detector": ("detector", full), "oracle": ("oracle", full),
          "align_only": ("oracle", dataclasses.replace(full, stages=("align",))),
          "headwise_only": ("oracle", dataclasses.replace(full, stages=("finetune",))),
          "uniform_only": ("oracle", dataclasses.replace(full, stages=("finetune",),
                                                         finetune=uniform))}


def _finished_rows(workdir: pathlib.Path) -> list[dict]:
  """A row per finished defense under workdir/<variant>/<victim>/result.json, so the
  summary covers runs of earlier calls with other variants or seeds too."""
  rows = []
  for path in sorted(workdir.glob("*/*/result.json")):
    result = json.loads(path.read_text())
    victim = pathlib.Path(result["victim"]) / "result.json"
    if not victim.exists():
      raise FileNotFoundError(f"{path} defends {result['victim']}, whose result.json is gone; "
                              "the summary reads each victim's task, attack and seed there.")
    cfg = json.loads(victim.read_text())["config"]
    variant, picked = path.parent.parent.name, (result["detection"] or {}).get("detector")
    rescore = result.get("setup", {}).get("rescore", "paper")
    watch = result.get("setup", {}).get("watch_share", 0.0)
    rows.append({"victim": path.parent.name, "task": cfg["task"], "attack": cfg["attack"],
                 "dataset": cfg["dataset"] if cfg["task"] == "classification" else None,
                 "seed": cfg["seed"],
                 "variant": reporting_lm.variant_label(variant, picked, rescore, watch),
                 **{k: result[k] for k in ("before", "after", "detection")},
                 "seconds": result["report"].get("seconds"),
                 **({"removed": {k: result["report"]["filter"][k] for k in
                                 ("removed", "poisoned_removed", "poisoned_rows", "rows")}}
                    if "filter" in result["report"] else {})})
  return sorted_rows(rows)


def sorted_rows(rows: list[dict]) -> list[dict]:
  """Rows in the summaries' order: task, attack, variant (ours, then baselines), seed."""
  order = [*variants(FLAGS.config), *BASELINE_VARIANTS]
  return sorted(rows, key=lambda r: (r["task"], r["attack"],
                                     order.index(r["variant"].split(" (")[0]), r["seed"]))


def write_summaries(rows: list[dict], workdir: pathlib.Path) -> str:
  """Writes defend_lm.json/.md/.png, and table2b.json/.md/.png (generation victims)
  and table2a_chat.json/.md/.png (chat classifiers) where `rows` hold such victims,
  under workdir; returns the markdown of the first."""
  table, bars = reporting_lm.lm_defense_table(rows)
  text = ("Defense of SmolLM2 victims: metrics on each victim's held-out test prompts, "
          "detector AUROC and suspects on its monitored stream (mean ± std over seeds)\n\n"
          + table)
  workdir.mkdir(parents=True, exist_ok=True)
  write_json(workdir / "defend_lm.json", rows, default=str)
  (workdir / "defend_lm.md").write_text(f"{text}\n")
  plots.plot_metric_bars(bars, workdir / "defend_lm.png", title="SmolLM2 victims after defense")
  for spec, name in ((reporting_lm.GENERATION_GRID, "table2b"),
                     (reporting_lm.CHAT_GRID, "table2a_chat")):
    grid, columns = reporting_lm.lm_grid_table(rows, spec)
    if not columns:  # no victim of this kind
      continue
    write_json(workdir / f"{name}.json", columns)
    (workdir / f"{name}.md").write_text(
        f"{spec.name} on SmolLM2: ASR and clean utility on each victim's held-out test "
        f"prompts (mean ± std over seeds)\n\n{grid}\n")
    plots.plot_metric_bars({f"{kind}\n{c}": {m: values[m] for m in ("asr", spec.utility)}
                            for kind, by_column in columns.items()
                            for c, values in by_column.items()},
                           workdir / f"{name}.png", title=f"{spec.name} on SmolLM2")
  return text


def main(argv):
  del argv
  experiments.use_data_root()
  config, workdir = FLAGS.config, pathlib.Path(FLAGS.workdir)
  table, detector = variants(config), detector_config(config.detector)
  unknown = sorted(set(FLAGS.variants) - set(table) - set(BASELINE_VARIANTS))
  if unknown:
    raise ValueError(f"Unknown variants {unknown}; choose from "
                     f"{sorted([*table, *BASELINE_VARIANTS])}.")
  for _, run, cfg in reporting.find_victims(FLAGS.victims_dir, FLAGS.attacks, FLAGS.seeds):
    setup = LMDefenseSetup(**{**config.setup.to_dict(), "seed": cfg["seed"]})
    # All the variants run on this victim load and measure it once.
    prepare = functools.cache(functools.partial(PreparedLMVictim, run, setup))
    for name in FLAGS.variants:
      if name in BASELINE_VARIANTS:
        baseline = baseline_config(config.baselines, name, LM_BASELINES)
        if name == "muscle_lora":
          baseline = dataclasses.replace(baseline, **{k: cfg[k] for k in VICTIM_SCHEDULE})
        result = defend_lm_with_baseline(name, run, setup, baseline, workdir / name / run.name,
                                         prepare=prepare)
      else:
        suspects, sanitize_cfg = table[name]
        result = defend_lm_victim(run, dataclasses.replace(setup, suspects=suspects),
                                  sanitize_cfg, workdir / name / run.name, detector=detector,
                                  prepare=prepare)
      logging.info("%s %s: %s -> %s", name, run.name, result["before"], result["after"])
  print(write_summaries(_finished_rows(workdir), workdir))


if __name__ == "__main__":
  app.run(main)
