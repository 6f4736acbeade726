r"""The owner's audit on classifiers whose triggers are known: its verdict, its
flags and the sanitised model's CA and ASR, per detector and incoming stream
(jax_attnalign.harness.owner).

  python -m experiments.audit_victims --victims_dirs runs/sst2 --clean_dirs runs/sst2_clean \
      --workdir runs/owner --detectors crowding,heads --streams mixed,clean

Every backdoored victim under --victims_dirs is audited on each stream ('mixed':
the defense harness's monitored stream; 'clean': as many clean test inputs).
Every clean model under --clean_dirs (`experiments.attack --attacks clean`) is
audited with the setup of each backdoored victim of its seed, so that it receives
that attack's triggered inputs without having learnt the trigger. The stream sizes
and the defender's rows are --config's setup (experiments/configs/defend.py).
Writes <workdir>/<run>/<detector>/<stream>/record.json and owner_audits.json/.md
over every finished run; finished runs are read back, interrupted ones resume.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags
from ml_collections import config_flags

import experiments
from jax_attnalign.audit import AuditConfig
from jax_attnalign.data.files import write_json
from jax_attnalign.harness import owner, reporting

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiments)  # --data_root and other shared flags in --help
config_flags.DEFINE_config_file("config", "experiments/configs/defend.py",
                                "Defense config (its setup part: streams, defender rows).")
flags.DEFINE_list("victims_dirs", ["workdir/attack"], "experiments.attack workdirs.")
flags.DEFINE_list("clean_dirs", [], "experiments.attack workdirs holding clean models.")
flags.DEFINE_list("attacks", [], "Only these attacks (default: every victim found).")
flags.DEFINE_list("seeds", [], "Only victims of these seeds (default: all).")
flags.DEFINE_list("detectors", ["crowding", "heads"], "The audit's encoder detectors.")
flags.DEFINE_list("streams", list(owner.STREAMS), f"Incoming streams, of {owner.STREAMS}.")
flags.DEFINE_integer("max_rounds", None, "Sanitisation rounds at most (default: the "
                     "audit's).", lower_bound=1)
flags.DEFINE_string("workdir", "workdir/owner", "Output folder.")


def clean_models(clean_dirs: list[str]) -> dict[str, tuple[str, pathlib.Path]]:
  """{seed: (run name, run directory)} of the clean models under `clean_dirs`."""
  found = {str(cfg["seed"]): (f"{cfg['dataset']}/{run}", run_dir)
           for folder in clean_dirs for run, run_dir, cfg in reporting.runs_in(folder)
           if cfg["attack"] == "clean"}
  if clean_dirs and not found:
    raise FileNotFoundError(f"No clean model under {', '.join(clean_dirs)}; train one with "
                            "`python -m experiments.attack --attacks clean --workdir DIR`.")
  return found


def main(argv):
  del argv
  experiments.use_data_root()
  setup = FLAGS.config.setup
  jobs = []
  clean = clean_models(FLAGS.clean_dirs)
  for key, run_dir, cfg in reporting.grid_victims(FLAGS.victims_dirs, FLAGS.attacks,
                                                  FLAGS.seeds):
    jobs.append((key, reporting.victim_setup(setup, run_dir, cfg), False))
    if str(cfg["seed"]) in clean:
      name, clean_dir = clean[str(cfg["seed"])]
      jobs.append((f"{name} ({cfg['attack']} stream)",
                   reporting.victim_setup(setup, clean_dir, cfg), True))
  workdir = pathlib.Path(FLAGS.workdir)
  cfg = AuditConfig(max_rounds=FLAGS.max_rounds)
  records = [owner.audit_victim(name, victim, detector, stream,
                                workdir / owner.run_folder(name, detector, stream), cfg,
                                clean_model=clean_model)
             for detector in FLAGS.detectors for stream in FLAGS.streams
             for name, victim, clean_model in jobs]
  finished = [json.loads(p.read_text()) for p in sorted(workdir.rglob("record.json"))]
  write_json(workdir / "owner_audits.json", finished)
  table = owner.owner_table(finished)
  (workdir / "owner_audits.md").write_text(
      "# The owner's audit on victims whose triggers are known\n\n" + table + "\n")
  print(owner.owner_table(records))
  print(f"wrote {workdir / 'owner_audits.md'} (every finished run)")


if __name__ == "__main__":
  app.run(main)
