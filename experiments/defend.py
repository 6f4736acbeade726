r"""Defends backdoored victims: detector-chosen (or oracle) suspects, sanitise, CA/ASR.

  python -m experiments.defend --victims_dir runs/attack --workdir runs/defend \
      --config experiments/configs/defend.py --config.setup.suspects oracle
  python -m experiments.defend ... --config.setup.detector dan   # DAN picks the suspects
  python -m experiments.defend ... --config.sanitize.stopping.flag target_class
      # rounds stop on the suspects' predicted class, not the detector's flags

Writes per-run result.json (+ the sanitised checkpoint) and defend.json/.md/.png.
Interrupted runs resume; finished runs are read back.
"""

from __future__ import annotations

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
flags.DEFINE_list("attacks", [], "Only these attacks (default: every victim).")
flags.DEFINE_string("workdir", "workdir/defend", "Output folder.")


def main(argv):
  del argv
  experiments.use_data_root()
  config = FLAGS.config
  suspects = config.setup.suspects
  if suspects == "detector" and config.setup.detector != "paper":
    suspects = f"{config.setup.detector} detector"  # another detector of detection
  stop = config.sanitize.stopping.flag
  variant = f"ours ({suspects} suspects{'' if stop == 'detector' else f', {stop} stop'})"
  reporting.defend_and_report(reporting.find_victims(FLAGS.victims_dir, FLAGS.attacks),
                              {variant: ({}, sanitize_config(config.sanitize))},
                              config, FLAGS.workdir, "defend",
                              "Defense of backdoored victims")


if __name__ == "__main__":
  app.run(main)
