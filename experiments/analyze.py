r"""Figure 1 and Table 1: head-pair similarity of clean vs triggered inputs, per view.

For each backdoored victim and each view: the fraction of head pairs with
cosine > 0.99, the 99th percentile and the mean pairwise cosine (per input,
averaged over the view's layers), clean vs triggered, with the per-input
detection AUROC. Writes per-victim analysis.json + plots and analyze.json/.md.

  python -m experiments.analyze --victims_dir runs/attack --workdir runs/analyze
"""

from __future__ import annotations

import json
import pathlib

import tqdm
from absl import app, flags
from ml_collections import config_flags

import experiments
from jax_attnalign import metrics
from jax_attnalign.analysis import VIEWS
from jax_attnalign.data.files import write_json
from jax_attnalign.defense.detector import STATISTICS
from jax_attnalign.harness import reporting
from jax_attnalign.harness.pipeline import analyze_victim

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiments)  # --data_root and other shared flags in --help
config_flags.DEFINE_config_file("config", "experiments/configs/defend.py",
                                "Defense config (ml_collections); its setup part is used.")
flags.DEFINE_string("victims_dir", "workdir/attack", "experiments.attack's workdir.")
flags.DEFINE_list("attacks", [], "Only these attacks (default: every victim).")
flags.DEFINE_list("views", [v for v in VIEWS if not v.startswith("gen_to_prompt")],
                  "Views to compare (encoders: the [CLS]-row and full views).")
flags.DEFINE_integer("inputs", 200, "Clean and triggered test inputs each.", lower_bound=1)
flags.DEFINE_string("workdir", "workdir/analyze", "Output folder.")


def main(argv):
  del argv
  experiments.use_data_root()
  workdir = pathlib.Path(FLAGS.workdir)
  results = {}
  for run, run_dir, victim_cfg in tqdm.tqdm(
      reporting.find_victims(FLAGS.victims_dir, FLAGS.attacks), desc="analyze"):
    out = workdir / run / "analysis.json"
    if out.exists():  # resume: finished victims are read back
      results[run] = json.loads(out.read_text())
      continue
    setup = reporting.victim_setup(FLAGS.config.setup, run_dir, victim_cfg,
                                   stream_clean=FLAGS.inputs, stream_triggered=FLAGS.inputs)
    results[run] = analyze_victim(setup, FLAGS.views, list(STATISTICS), workdir / run)
  lines = ["| attack | view | pairs > 0.99, clean / triggered | 99th pct, clean / triggered "
           "| AUROC (> 0.99) | AUROC (99th pct) | AUROC (mean cos) | victims |",
           "|---" * 8 + "|"]
  for attack in sorted({r["setup"]["attack"] for r in results.values()}):
    runs = [r for r in results.values() if r["setup"]["attack"] == attack]
    for view in FLAGS.views:
      stat = lambda s, k: [r["views"][view][s][k] for r in runs]
      pair = lambda s: (f"{metrics.format_mean_std(stat(s, 'clean'))} / "
                        f"{metrics.format_mean_std(stat(s, 'triggered'))}")
      lines.append(f"| {attack} | {view} | {pair('frac_above')} | {pair('percentile')} | "
                   + " | ".join(metrics.format_mean_std(stat(s, "auroc"))
                                for s in ("frac_above", "percentile", "mean"))
                   + f" | {len(runs)} |")
  count = lambda key: reporting.count_range(r[key] for r in results.values() if key in r)
  table = ("Head-pair similarity (mean ± std over victims) on each victim's stream of "
           f"{count('clean_inputs')} clean and {count('triggered_inputs')} triggered test "
           "inputs; AUROC: triggered vs clean, one score per input\n\n" + "\n".join(lines))
  workdir.mkdir(parents=True, exist_ok=True)
  write_json(workdir / "analyze.json", results)
  (workdir / "analyze.md").write_text(f"{table}\n")
  print(table)


if __name__ == "__main__":
  app.run(main)
