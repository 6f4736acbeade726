r"""Table 2: attacks x datasets x models, our method beside no defense.

Every victim under each of --victims_dirs (one `experiments.attack` workdir per
dataset or model) is defended twice: with the detector's suspects and with
oracle suspects (the stream's triggered inputs). "No defense" is the before
column.

  python -m experiments.table2 --victims_dirs runs/sst2,runs/ag_news --workdir runs/table2
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

import experiments
from jax_attnalign.harness import reporting
from jax_attnalign.harness.configs import sanitize_config

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/configs/defend.py",
                                "Defense config (ml_collections).")
flags.DEFINE_list("victims_dirs", ["workdir/attack"], "experiments.attack workdirs.")
flags.DEFINE_list("suspects", ["detector", "oracle"], "Suspect sources to report.")
flags.DEFINE_string("workdir", "workdir/table2", "Output folder.")


def main(argv):
  del argv
  experiments.use_data_root()
  config = FLAGS.config
  base = sanitize_config(config.sanitize)
  variants = {f"ours ({s} suspects)": ({"suspects": s}, base) for s in FLAGS.suspects}
  victims = [v for d in FLAGS.victims_dirs for v in reporting.find_victims(d)]
  reporting.defend_and_report(victims, variants, config, FLAGS.workdir, "table2",
                              "Table 2: no defense (before) vs our method (after)")


if __name__ == "__main__":
  app.run(main)
