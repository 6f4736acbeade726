r"""Table 2: attacks x datasets, vanilla beside the baselines and our method.

Every victim under each of --victims_dirs (one `experiments.attack` workdir per
dataset or model) is defended once per column: FP (Fine-Pruning), MEFT, PURE
(`jax_attnalign.baselines`, on the defender's clean rows), ours with the
detector's suspects and ours with oracle suspects (the stream's triggered
inputs). Vanilla is the victims' before numbers; every column is measured on the
same held-out sets. Settings: --config (its `baselines` part for FP, MEFT, PURE).

  python -m experiments.table2 --victims_dirs runs/sst2,runs/ag_news --workdir runs/table2 \
      --columns fp,meft,pure,detector,oracle

Writes per-run result.json (+ the defended checkpoint) under <workdir>/<column>/,
and table2.json/.md/.png. Interrupted runs resume; finished runs are read back.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

import experiments
from jax_attnalign.harness import reporting

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/configs/defend.py",
                                "Defense config (ml_collections).")
flags.DEFINE_list("victims_dirs", ["workdir/attack"], "experiments.attack workdirs.")
flags.DEFINE_list("columns", list(reporting.TABLE2_COLUMNS),
                  f"Defense columns beside vanilla, of {list(reporting.TABLE2_COLUMNS)}.")
flags.DEFINE_string("workdir", "workdir/table2", "Output folder.")


def main(argv):
  del argv
  experiments.use_data_root()
  config = FLAGS.config
  victims = [v for d in FLAGS.victims_dirs for v in reporting.find_victims(d)]
  reporting.defend_and_report(victims, reporting.table2_variants(FLAGS.columns, config),
                              config, FLAGS.workdir, "table2",
                              "Table 2: vanilla (before) vs each defense (after)",
                              columns=True)


if __name__ == "__main__":
  app.run(main)
