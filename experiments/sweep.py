r"""Figures 3-5: the defense over alpha, tau and (suspicious, safe) learning rates.

Each grid point changes one setting of the config and keeps the rest.

  python -m experiments.sweep --victims_dir runs/attack --workdir runs/sweep \
      --alphas 0.3,0.5,0.7,0.9 --taus 0.1,0.2,0.3,0.4
"""

from __future__ import annotations

import dataclasses
from absl import app, flags
from ml_collections import config_flags

import experiments
from jax_attnalign.harness import reporting
from jax_attnalign.harness.configs import sanitize_config

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiments)  # --data_root and other shared flags in --help
config_flags.DEFINE_config_file("config", "experiments/configs/defend.py",
                                "Defense config (ml_collections).")
flags.DEFINE_string("victims_dir", "workdir/attack", "experiments.attack's workdir.")
flags.DEFINE_list("attacks", ["badnets"], "Attacks to sweep over.")
flags.DEFINE_list("alphas", ["0.3", "0.5", "0.7", "0.9"], "Eq. 5's alpha (Figure 3).")
flags.DEFINE_list("taus", ["0.1", "0.2", "0.3", "0.4"], "Eq. 5's tau (Figure 4).")
flags.DEFINE_list("rate_pairs", ["5e-6:2e-4", "1e-5:1e-4", "5e-6:5e-4"],
                  "suspicious:safe learning rates (Figure 5).")
flags.DEFINE_string("workdir", "workdir/sweep", "Output folder.")


def variants(base) -> dict:
  out = {}
  heads = lambda **changes: dataclasses.replace(
      base, classify=dataclasses.replace(base.classify, **changes))
  for a in map(float, FLAGS.alphas):
    out[f"alpha={a}"] = ({}, heads(alpha=a))
  for t in map(float, FLAGS.taus):
    out[f"tau={t}"] = ({}, heads(tau=t))
  for pair in FLAGS.rate_pairs:
    low, high = map(float, pair.split(":"))
    rates = dataclasses.replace(base.finetune.rates, suspicious=low, safe=high)
    out[f"lr={low:g}/{high:g}"] = ({}, dataclasses.replace(
        base, finetune=dataclasses.replace(base.finetune, rates=rates)))
  return out


def main(argv):
  del argv
  experiments.use_data_root()
  config = FLAGS.config
  reporting.defend_and_report(reporting.find_victims(FLAGS.victims_dir, FLAGS.attacks),
                              variants(sanitize_config(config.sanitize)), config,
                              FLAGS.workdir, "sweep",
                              "Sweep of alpha, tau and learning rates (Figures 3-5)")


if __name__ == "__main__":
  app.run(main)
