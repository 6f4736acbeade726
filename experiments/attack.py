r"""Backdoors victims: fine-tunes a classifier on poisoned data over several seeds.

For each attack in --attacks (and 'clean', the reference) and each seed, trains
a victim (jax_attnalign.victim), then writes per-run result.json, a summary
JSON, a markdown table and a bar plot of CA and ASR (mean ± std over seeds) to
--workdir.
Interrupted runs resume; finished runs are not repeated.

  python -m experiments.attack --data_dir ../shared/data/sst2/clean \
      --attacks clean,badnets,hiddenkiller --seeds 0,1,2
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

from jax_attnalign import metrics, plots
from jax_attnalign.victim import VictimConfig, train_classification_victim

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/data/sst2/clean", "Folder with train/test.tsv.")
flags.DEFINE_string("dataset", "sst2", "sst2, ag_news or imdb (label set and prompts).")
flags.DEFINE_string("model", "", "Checkpoint directory or hub id (default: bundled MiniLM).")
flags.DEFINE_list("attacks", ["clean", "badnets"], "Attacks to run ('clean' = no attack).")
flags.DEFINE_string("hiddenkiller_dir", "../shared/data/sst2/hiddenkiller",
                    "HiddenKiller's released SCPN paraphrases (train/test.tsv).")
flags.DEFINE_float("hiddenkiller_poison_rate", 0.18,
                   "HiddenKiller's rate: its release paraphrases 20% of the full split, "
                   "so a seeded subset has about 20% eligible rows; 0.18 always fits.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_integer("target", 1, "Target label.")
flags.DEFINE_integer("train_size", 3000, "Training subset size (0: all).")
flags.DEFINE_integer("test_size", 0, "Test subset size (0: all).")
flags.DEFINE_integer("epochs", 2, "Fine-tuning epochs.")
flags.DEFINE_integer("max_length", 64, "Tokens per sentence (longer ones are cut).")
flags.DEFINE_float("learning_rate", 5e-5, "Peak AdamW learning rate.")
flags.DEFINE_string("workdir", "workdir/attack", "Output folder.")


def attack_kwargs(attack: str) -> tuple:
  if attack == "hiddenkiller":
    return (("paraphrase_dir", FLAGS.hiddenkiller_dir),
            ("poison_rate", FLAGS.hiddenkiller_poison_rate))
  return ()


def main(argv):
  del argv
  workdir = pathlib.Path(FLAGS.workdir)
  results = {}
  for attack in FLAGS.attacks:
    for seed in map(int, FLAGS.seeds):
      cfg = VictimConfig(
          data_dir=FLAGS.data_dir, dataset=FLAGS.dataset, model=FLAGS.model, attack=attack,
          attack_kwargs=attack_kwargs(attack), target=FLAGS.target,
          train_size=FLAGS.train_size, test_size=FLAGS.test_size, epochs=FLAGS.epochs,
          learning_rate=FLAGS.learning_rate, max_length=FLAGS.max_length, seed=seed)
      results.setdefault(attack, []).append(
          train_classification_victim(cfg, workdir / f"{attack}_seed{seed}"))
  rows = ["| attack | CA | ASR | seeds |", "|---|---|---|---|"]
  summary = {}
  for attack, runs in results.items():
    ca = metrics.mean_std([r["ca"] for r in runs])
    asr = metrics.mean_std([r["asr"] for r in runs]) if "asr" in runs[0] else None
    summary[attack] = {"ca": ca, "asr": asr, "runs": runs}
    rows.append(f"| {attack} | {ca[0]:.3f} ± {ca[1]:.3f} | "
                + (f"{asr[0]:.3f} ± {asr[1]:.3f}" if asr else "—") + f" | {len(runs)} |")
  table = "\n".join(rows)
  (workdir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
  (workdir / "summary.md").write_text(
      f"Victims on {FLAGS.data_dir} (mean ± std over seeds)\n\n{table}\n")
  plots.plot_metric_bars(
      {a: {k: [r[k] for r in runs if k in r] for k in ("ca", "asr")}
       for a, runs in results.items()}, workdir / "summary.png",
      title=f"Victims on {FLAGS.dataset} (mean ± std over seeds)")
  print(table)


if __name__ == "__main__":
  app.run(main)
