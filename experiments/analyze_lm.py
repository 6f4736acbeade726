r"""Table 1 / Figure 1 on decoder victims: are the heads alike when the trigger is present?

For every backdoored victim under --victims_dir (written by experiments.attack_lm),
its clean and triggered test prompts are answered greedily by the victim, and the
answers teacher-forced; each view's pairwise head-cosine statistics (99th
percentile, share of pairs above 0.99, mean) are computed per layer and pooled
over all heads. The same inputs read by the clean reference model of the task
(the 'clean' run in the folder, when there is one) show whether the trigger
alone, without the backdoor, makes heads alike. Writes per victim analysis.json
and per-layer plots, and table1.json / table1.md with the paper's numbers beside.

  python -m experiments.analyze_lm --victims_dir runs/lm_sst2 --workdir runs/analyze_lm
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

import experiments
from jax_attnalign.data.files import write_json
from jax_attnalign.harness import reporting_lm
from jax_attnalign.harness.pipeline_lm import STATISTICS, analyze_lm_victim

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiments)  # --data_root and other shared flags in --help
flags.DEFINE_string("victims_dir", "workdir/attack_lm", "experiments.attack_lm's workdir.")
flags.DEFINE_list("views", ["gen_to_prompt", "gen_to_prompt_nospecial", "full"],
                  "Views (analysis.VIEWS).")
flags.DEFINE_integer("size", 200, "Clean and triggered test prompts each.", lower_bound=1)
flags.DEFINE_string("workdir", "workdir/analyze_lm", "Output folder.")

# The paper's Table 1 (Llama-2): 99th percentile of pairwise head cosine,
# clean -> triggered samples.
PAPER_TABLE1 = {"badnets": (0.9149, 0.9921), "hiddenkiller": (0.8854, 0.9717),
                "cba": (0.9298, 0.9954)}


def _victims(victims_dir: pathlib.Path) -> tuple[list[pathlib.Path], dict[str, pathlib.Path]]:
  """(backdoored victim runs, {task: clean reference run})."""
  victims, clean = [], {}
  for result in sorted(victims_dir.glob("*/result.json")):
    cfg = json.loads(result.read_text())["config"]
    if cfg["attack"] == "clean":
      clean.setdefault(cfg["task"], result.parent)
    else:
      victims.append(result.parent)
  if not victims:
    raise FileNotFoundError(f"No backdoored victim under {victims_dir}; train some with "
                            "`python -m experiments.attack_lm --workdir DIR`.")
  return victims, clean


def main(argv):
  del argv
  experiments.use_data_root()
  workdir = pathlib.Path(FLAGS.workdir)
  victims, clean = _victims(pathlib.Path(FLAGS.victims_dir))
  rows = []
  for run in victims:
    readers = {"victim": None}
    task = json.loads((run / "result.json").read_text())["config"]["task"]
    if task in clean:
      readers["clean model"] = clean[task] / "model"
    for reader, model_dir in readers.items():
      out = analyze_lm_victim(run, tuple(FLAGS.views),
                              workdir / run.name / reader.replace(" ", "_"), size=FLAGS.size,
                              model_dir=model_dir)
      for view, by_statistic in out["views"].items():
        for statistic in STATISTICS:
          entry = by_statistic[statistic]
          layer_auroc = entry["auroc_per_layer"]
          best = max(range(len(layer_auroc)), key=lambda i: abs(layer_auroc[i] - 0.5))
          paper = PAPER_TABLE1.get(out["attack"]) if statistic == "percentile" else None
          rows.append({"victim": run.name, "reader": reader, "view": view,
                       "statistic": statistic, **{k: entry[k] for k in
                                                  ("clean", "triggered", "auroc",
                                                   "auroc_layer_mean")},
                       "best_layer": best, "best_layer_auroc": layer_auroc[best],
                       "paper": paper})
  table = ("Table 1 on SmolLM2 victims: pairwise head-cosine statistics of the teacher-forced "
           f"own answers, clean vs triggered test prompts ({FLAGS.size} each); AUROC of "
           "triggered vs clean per input (below 0.5: lower on triggered inputs), of the "
           "statistic over all heads pooled and of the detector's score (each layer's "
           "statistic, averaged over layers)\n\n" + reporting_lm.table1_table(rows))
  workdir.mkdir(parents=True, exist_ok=True)
  write_json(workdir / "table1.json", rows)
  (workdir / "table1.md").write_text(f"{table}\n")
  print(table)


if __name__ == "__main__":
  app.run(main)
