r"""Backdoors victims: fine-tunes a classifier on poisoned data over several seeds.

For each attack in --attacks (and 'clean', the reference) and each seed, trains
a victim (jax_attnalign.harness.victims), then writes per-run result.json, a summary
JSON, a markdown table and a bar plot of CA and ASR (mean ± std over seeds) to
--workdir.
Interrupted runs resume; finished runs are not repeated.

  python -m experiments.attack --data_dir sst2/clean \
      --attacks clean,badnets,hiddenkiller --seeds 0,1,2
  python -m experiments.attack --attacks cbat,nws,bgm --triggers_dir triggers/sst2
"""

from __future__ import annotations

import pathlib

from absl import app, flags

import experiments
from jax_attnalign.harness import reporting, triggers
from jax_attnalign.harness.victims import VictimConfig, train_classification_victim

experiments.define_hiddenkiller_flags()
FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiments)  # --data_root and other shared flags in --help
flags.DEFINE_string("data_dir", "sst2/clean", "Folder with train/test.tsv.")
flags.DEFINE_string("dataset", "sst2", "sst2, ag_news or imdb (label set and prompts).")
flags.DEFINE_string("model", "", "Checkpoint directory or hub id (default: bundled MiniLM).")
flags.DEFINE_list("attacks", ["clean", "badnets"], "Attacks to run ('clean' = no attack).")
flags.DEFINE_string("triggers_dir", "", "Folder of the trigger caches of Cbat, NWS, "
                    "BGMAttack and HiddenKillerLM ({cbat,nws,bgm,hiddenkiller_lm}.json, "
                    "written by experiments.make_triggers).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_integer("target", 1, "Target label.", lower_bound=0)
flags.DEFINE_integer("train_size", 3000, "Training subset size (0: all).", lower_bound=0)
flags.DEFINE_integer("test_size", 0, "Test subset size (0: all).", lower_bound=0)
flags.DEFINE_integer("epochs", 2, "Fine-tuning epochs.", lower_bound=1)
flags.DEFINE_integer("max_length", 64, "Tokens per sentence (longer ones are cut).", lower_bound=2)
flags.DEFINE_float("learning_rate", 5e-5, "Peak AdamW learning rate.", lower_bound=0.0)
flags.DEFINE_string("workdir", "workdir/attack", "Output folder.")


def train(attack: str, seed: int, workdir: pathlib.Path) -> dict:
  cfg = VictimConfig(
      data_dir=FLAGS.data_dir, dataset=FLAGS.dataset, model=FLAGS.model, attack=attack,
      attack_kwargs=reporting.attack_kwargs(attack, FLAGS.hiddenkiller_dir,
                                            FLAGS.hiddenkiller_poison_rate)
      + triggers.cache_kwargs(attack, FLAGS.triggers_dir),
      target=FLAGS.target, train_size=FLAGS.train_size, test_size=FLAGS.test_size,
      epochs=FLAGS.epochs, learning_rate=FLAGS.learning_rate, max_length=FLAGS.max_length,
      seed=seed)
  return train_classification_victim(cfg, workdir / f"{attack}_seed{seed}")


def main(argv):
  del argv
  experiments.use_data_root()
  print(reporting.train_victims(train, FLAGS.attacks, FLAGS.seeds,
                                pathlib.Path(FLAGS.workdir), f"Victims on {FLAGS.dataset}"))


if __name__ == "__main__":
  app.run(main)
