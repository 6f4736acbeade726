r"""Table 2: attacks x datasets, vanilla beside the baselines and our method.

Every victim under each of --victims_dirs (one `experiments.attack` workdir per
dataset or model) is defended once per column: FP (Fine-Pruning), MEFT, PURE
(`jax_attnalign.baselines`, on the defender's clean rows), ours with the
detector's suspects and ours with oracle suspects (the stream's triggered
inputs). Vanilla is the victims' before numbers; every column is measured on the
same held-out sets. Settings: --config (its `baselines` part for FP, MEFT, PURE).

  python -m experiments.table2 --victims_dirs runs/sst2,runs/ag_news --workdir runs/table2 \
      --columns fp,meft,pure,detector,oracle

Writes per-run result.json (+ the defended checkpoint) under
<workdir>/<column>/<dataset>/<victim>/, and table2.json/.md/.png over every run
finished in the workdir, so a grid can be run in parts (--attacks, --seeds).
Interrupted runs resume; finished runs are read back.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

import experiments
from jax_attnalign.harness import reporting

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiments)  # --data_root and other shared flags in --help
config_flags.DEFINE_config_file("config", "experiments/configs/defend.py",
                                "Defense config (ml_collections).")
flags.DEFINE_list("victims_dirs", ["workdir/attack"], "experiments.attack workdirs.")
flags.DEFINE_list("attacks", [], "Only these attacks (default: every victim found).")
flags.DEFINE_list("seeds", [], "Only victims of these seeds (default: all).")
flags.DEFINE_list("columns", list(reporting.TABLE2_COLUMNS),
                  f"Defense columns beside vanilla, of {list(reporting.TABLE2_COLUMNS)}.")
flags.DEFINE_string("workdir", "workdir/table2", "Output folder.")


def main(argv):
  del argv
  experiments.use_data_root()
  config = FLAGS.config
  reporting.defend_and_report(
      reporting.grid_victims(FLAGS.victims_dirs, FLAGS.attacks, FLAGS.seeds),
      reporting.table2_variants(FLAGS.columns, config), config, FLAGS.workdir, "table2",
      "Table 2: vanilla (before) vs each defense (after)", columns=True,
      summary_victims=reporting.grid_victims(FLAGS.victims_dirs))


if __name__ == "__main__":
  app.run(main)
