r"""Table 3: the full method (the paper's: every round fine-tunes), ours (fine-tune
only to repair what alignment cost), alignment only, head-wise fine-tuning only
and uniform fine-tuning only (every head at the safe rate), on the same suspects.

  python -m experiments.ablation --victims_dir runs/attack --workdir runs/ablation
"""

from __future__ import annotations

import dataclasses
from absl import app, flags
from ml_collections import config_flags

import experiments
from jax_attnalign.defense import HeadRates
from jax_attnalign.harness import reporting
from jax_attnalign.harness.configs import sanitize_config

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiments)  # --data_root and other shared flags in --help
config_flags.DEFINE_config_file("config", "experiments/configs/defend.py",
                                "Defense config (ml_collections).")
flags.DEFINE_string("victims_dir", "workdir/attack", "experiments.attack's workdir.")
flags.DEFINE_list("attacks", ["badnets"], "Attacks to ablate.")
flags.DEFINE_string("workdir", "workdir/ablation", "Output folder.")


def variants(full) -> dict:
  """{name: ({}, SanitizeConfig)}: one round each, so the variants are comparable."""
  one = dataclasses.replace(full, stopping=dataclasses.replace(full.stopping, stop="fixed",
                                                               max_rounds=1))
  when = lambda rule: dataclasses.replace(one, finetune=dataclasses.replace(one.finetune,
                                                                            when=rule))
  uniform = dataclasses.replace(one.finetune, rates=HeadRates(*(full.finetune.rates.safe,) * 3))
  return {"full method": ({}, when("always")),
          "fine-tune only to repair": ({}, when("repair")),
          "alignment only": ({}, dataclasses.replace(one, stages=("align",))),
          "head-wise fine-tuning only": ({}, dataclasses.replace(one, stages=("finetune",))),
          "uniform fine-tuning only": ({}, dataclasses.replace(
              one, stages=("finetune",), finetune=uniform))}


def main(argv):
  del argv
  experiments.use_data_root()
  config = FLAGS.config
  reporting.defend_and_report(reporting.find_victims(FLAGS.victims_dir, FLAGS.attacks),
                              variants(sanitize_config(config.sanitize)), config,
                              FLAGS.workdir, "ablation", "Ablation (Table 3)")


if __name__ == "__main__":
  app.run(main)
