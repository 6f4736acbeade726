r"""The main job: backdoor a pretrained model, see it in its heads, detect, sanitise.

Offline by default, on the bundled MiniLM and the embedded tweets (`data.embedded`):
  1. inject a BadNets backdoor (rare-word trigger, 20% of a training subset);
  2. show the similarity effect: head pairs with cosine > 0.99 and the 99th
     percentile, clean vs triggered test inputs, per view;
  3. calibrate the detector on clean data (5% false positives) and let it pick
     the suspects from a stream of clean and triggered inputs;
  4. sanitise (alignment + head-wise fine-tuning, rounds until the suspects look
     clean) and print CA and ASR before and after.
Writes report.md, JSON and plots to --workdir; reruns reuse finished steps.

  python -m experiments.demo
  python -m experiments.demo --data sst2/clean --dataset sst2
  python -m experiments.demo --model bert-base-uncased --data stanfordnlp/sst2  # network
"""

from __future__ import annotations

import pathlib

from absl import app, flags

import experiments
from jax_attnalign import plots
from jax_attnalign.assets import bundled_minilm_path
from jax_attnalign.data.files import write_json
from jax_attnalign.defense import DetectorConfig
from jax_attnalign.defense.sanitize import SanitizeConfig
from jax_attnalign.harness.pipeline import DefenseSetup, analyze_victim, defend_victim
from jax_attnalign.harness.victims import VictimConfig, train_classification_victim

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiments)  # --data_root and other shared flags in --help
flags.DEFINE_string("data", "tweets", "'tweets' (embedded), a local folder with "
                    "train/test files, or a hub dataset id.")
flags.DEFINE_string("dataset", "tweets", "Registry name of the label set (tweets, sst2, ...).")
flags.DEFINE_string("model", "", "Checkpoint directory or hub id (default: bundled MiniLM).")
flags.DEFINE_integer("train_size", 1200, "Training sentences of the victim.", lower_bound=1)
flags.DEFINE_integer("eval_size", 500, "Test inputs measured (clean, and triggered).",
                     lower_bound=1)
flags.DEFINE_integer("max_length", 48, "Tokens per input.", lower_bound=2)
flags.DEFINE_integer("seed", 0, "Seed of the subset, the poisoning and the defense.", lower_bound=0)
flags.DEFINE_string("workdir", "workdir/demo", "Output folder.")

VIEWS = ("cls_row_nospecial", "cls_row_last_layer")


def disk_usage(path: pathlib.Path) -> int:
  """What `du -s` counts: the bytes of the blocks that the files under `path` take."""
  return sum(f.lstat().st_blocks * 512 for f in [path, *path.rglob("*")])


def human(size: float) -> str:
  """1.5 KiB, 919.7 MiB, ... (what `du -h` says)."""
  for unit in ("B", "KiB", "MiB", "GiB"):
    if size < 1024 or unit == "GiB":
      return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
    size /= 1024


def disk_line(workdir: pathlib.Path) -> str:
  """The workdir's disk use, with each step's folders of 1 MiB or more."""
  parts = {p: disk_usage(p) for step in workdir.iterdir() if step.is_dir()
           for p in step.iterdir()}
  big = sorted(((size, p) for p, size in parts.items() if size >= 2 ** 20), reverse=True)
  return (f"disk: {workdir} takes {human(disk_usage(workdir))} ("
          + ", ".join(f"{p.relative_to(workdir)} {human(size)}" for size, p in big)
          + "; ckpt/ and sanitize/ are orbax checkpoints, kept so that reruns resume)")


def main(argv):
  del argv
  experiments.use_data_root()
  workdir = pathlib.Path(FLAGS.workdir)
  victim = train_classification_victim(VictimConfig(
      data_dir=FLAGS.data, dataset=FLAGS.dataset, model=FLAGS.model, attack="badnets",
      train_size=FLAGS.train_size, test_size=FLAGS.eval_size, max_length=FLAGS.max_length,
      seed=FLAGS.seed), workdir / "victim")
  noun = "tweets" if FLAGS.dataset == "tweets" else f"{FLAGS.dataset} inputs"
  trained = (f"Victim (BadNets, {FLAGS.train_size} training {noun}): CA {victim['ca']:.3f} "
             f"on {victim['test_rows']} clean test {noun}, ASR {victim['asr']:.3f} on "
             f"{victim['triggered_rows']} triggered test {noun} (true label not the target)")
  print(f"1. {trained}")
  setup = DefenseSetup(victim=str(workdir / "victim" / "model"), data_dir=FLAGS.data,
                       dataset=FLAGS.dataset, attack="badnets", max_length=FLAGS.max_length,
                       eval_size=FLAGS.eval_size, seed=FLAGS.seed)
  analysis = analyze_victim(setup, list(VIEWS), ["frac_above", "percentile"],
                            workdir / "analysis")
  lines = ["| view | pairs > 0.99, clean / triggered | 99th pct, clean / triggered "
           "| AUROC of the 99th pct |",
           "|---|---|---|---|"]
  for view, stats in analysis["views"].items():
    f, p = stats["frac_above"], stats["percentile"]
    lines.append(f"| {view} | {f['clean']:.3f} / {f['triggered']:.3f} | "
                 f"{p['clean']:.3f} / {p['triggered']:.3f} | {p['auroc']:.3f} |")
  similarity = "\n".join(lines)
  stream = (f"the monitored stream of {analysis['clean_inputs']} clean and "
            f"{analysis['triggered_inputs']} triggered test {noun}")
  print(f"2. head similarity on {stream}:\n" + similarity)
  result = defend_victim(setup, SanitizeConfig(), workdir / "defend")
  d, before, after = result["detection"], result["before"], result["after"]
  sizes = result.get("inputs", {})  # absent from results of older runs
  count = lambda name: sizes.get(name, "the")
  detection = (f"detector ({DetectorConfig().view}, 99th percentile) calibrated "
               f"to 5% false positives on {count('calibration')} clean training {noun}; on "
               f"{stream}: AUROC {d['auroc']:.3f}, flagged {d['flagged']}, of which the "
               f"{d['suspects']} highest-scoring are the suspects ({d['suspects_triggered']} "
               "of them triggered)")
  print("3. " + detection)
  held = (f"CA on {count('held_clean')} held-out clean test {noun}, ASR on "
          f"{count('held_triggered')} held-out triggered test {noun}")
  outcome = ("| | CA | ASR |\n|---|---|---|\n"
             f"| backdoored | {before['ca']:.3f} | {before['asr']:.3f} |\n"
             f"| sanitised ({len(result['report']['rounds'])} round(s)) | "
             f"{after['ca']:.3f} | {after['asr']:.3f} |")
  print(f"4. sanitisation ({held}):\n" + outcome)
  plots.plot_metric_bars({"backdoored": {"CA": [before["ca"]], "ASR": [before["asr"]]},
                          "sanitised": {"CA": [after["ca"]], "ASR": [after["asr"]]}},
                         workdir / "defense.png", title="BadNets: before and after",
                         ylabel=f"share of held-out test {noun}")
  model = FLAGS.model or f"the bundled MiniLM ({bundled_minilm_path()})"
  (workdir / "report.md").write_text(
      f"# Backdoor demo: {model} on {FLAGS.data}\n\n{trained}.\n\n"
      f"## Head similarity\n\nOn {stream}.\n\n{similarity}\n\n"
      "Per layer (cls_row_nospecial):\n\n![](analysis/cls_row_nospecial_frac_above.png)\n\n"
      "The last layer (cls_row_last_layer):\n\n"
      "![](analysis/cls_row_last_layer_frac_above.png)\n\n"
      f"## Detection\n\n{detection}.\n\n## Sanitisation\n\n{held}.\n\n{outcome}\n\n"
      "![](defense.png)\n\nSanitised checkpoint (transformers-loadable): "
      "`defend/model/`.\n")
  write_json(workdir / "summary.json",
             {"victim": victim, "analysis": analysis["views"], "defense": result}, default=str)
  print(f"report: {workdir / 'report.md'}")
  print(disk_line(workdir))


if __name__ == "__main__":
  app.run(main)
