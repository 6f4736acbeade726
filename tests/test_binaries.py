"""Smoke tests of every experiment binary, as subprocesses, on a tiny configuration.

A tiny random BERT (MiniLM's tokenizer) is backdoored on synthetic sentences by
`experiments.attack`; analyze, defend, table2 (with the baselines), detect, ablation, sweep
and the main job (`experiments.demo`) then run on it with small settings and must write their files.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import ml_collections
from absl import flags
from ml_collections import config_flags

from hf_reference import hf_ca_asr
from jax_attnalign import attacks, data, save_pretrained
from jax_attnalign.defense import DetectorConfig, RestartConfig
from jax_attnalign.defense.sanitize import SanitizeConfig, Stopping
from jax_attnalign.harness import owner
from jax_attnalign.harness.baselines_lm import LM_BASELINES
from jax_attnalign.harness.configs import (baseline_config, detector_config, restart_config,
                                          sanitize_config)
from jax_attnalign.models import ModelConfig, build_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = ("the film was good bad long short funny dull great awful plot actor scene music "
         "story ending cast moment slow fast").split()
TINY = ["--config.setup.stream_clean=8", "--config.setup.stream_triggered=8",
        "--config.setup.clean_size=16", "--config.setup.calibration_size=8",
        "--config.setup.max_length=16", "--config.sanitize.align.steps=2",
        "--config.sanitize.finetune.epochs=1", "--config.sanitize.finetune.batch_size=8",
        "--config.sanitize.align.batch_size=8", "--config.sanitize.score_batch_size=8",
        "--config.sanitize.classify.tau=0.5", "--config.sanitize.stopping.max_rounds=1"]


def _write_split(path, n, rng):
  rows = ["sentence\tlabel"] + [
      " ".join(rng.choice(WORDS, rng.randint(4, 10))) + f"\t{rng.randint(2)}"
      for _ in range(n)]
  path.write_text("\n".join(rows) + "\n")


def run(module, *args, cwd):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f"{module} failed:\n{proc.stderr[-4000:]}"
  return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path):
  """{'root', 'data', 'model', 'victims'}: synthetic SST-2-like data, a tiny BERT
  with MiniLM's tokenizer, and its BadNets victim trained by experiments.attack."""
  root = tmp_path_factory.mktemp("tiny")
  rng = np.random.RandomState(0)
  (root / "data").mkdir()
  _write_split(root / "data" / "train.tsv", 800, rng)
  _write_split(root / "data" / "test.tsv", 400, rng)
  tokenizer = data.load_tokenizer(minilm_path)
  cfg = ModelConfig(model_type="bert", vocab_size=len(tokenizer), hidden_size=16,
                    num_layers=2, num_heads=4, intermediate_size=24,
                    max_position_embeddings=64)
  model = build_model(cfg, "classification")
  import jax  # pylint: disable=g-import-not-at-top
  params = model.init(jax.random.PRNGKey(0), np.ones((1, 4), np.int32))["params"]
  save_pretrained(model, params, root / "model", tokenizer=tokenizer)
  out = run("experiments.attack", f"--data_dir={root / 'data'}", "--dataset=sst2",
            f"--model={root / 'model'}", "--attacks=badnets", "--seeds=0", "--train_size=0",
            "--epochs=1", "--max_length=16", f"--workdir={root / 'victims'}", cwd=root)
  assert "| badnets |" in out
  return {"root": root, "data": root / "data", "model": root / "model",
          "victims": root / "victims"}


def test_attack_writes_victims(tiny):
  """The victim's CA and ASR, as summarised, are those transformers measures on the
  exported checkpoint (with its tokenizer) over the whole test split."""
  run = json.loads((tiny["victims"] / "badnets_seed0" / "result.json").read_text())
  summary = json.loads((tiny["victims"] / "summary.json").read_text())
  assert summary["badnets"]["ca"][0] == run["ca"] and summary["badnets"]["asr"][0] == run["asr"]
  test = data.load_classification(str(tiny["data"]), "test", dataset="sst2")
  triggered = attacks.make_attack("badnets", target=1, seed=0).triggered_test(test)
  assert (run["test_rows"], run["triggered_rows"]) == (len(test), len(triggered))
  ca, asr = hf_ca_asr(tiny["victims"] / "badnets_seed0" / "model", test, triggered, 16, 1)
  assert abs(ca - run["ca"]) <= 1 / len(test) and abs(asr - run["asr"]) <= 1 / len(triggered)
  summary_md = (tiny["victims"] / "summary.md").read_text()
  assert (f"ASR on the {len(triggered)} triggered test rows" in summary_md
          and f"the other metrics on the {len(test)} clean test rows" in summary_md)
  assert (tiny["victims"] / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_analyze_and_defend(tiny):
  common = [f"--victims_dir={tiny['victims']}", *TINY]
  out = run("experiments.analyze", *common[:1], "--inputs=8", "--views=cls_row_nospecial,full",
            f"--workdir={tiny['root'] / 'analyze'}", cwd=ROOT)
  assert "| badnets | full |" in out
  analysis = json.loads((tiny["root"] / "analyze" / "analyze.json").read_text())
  assert set(analysis["badnets_seed0"]["views"]) == {"cls_row_nospecial", "full"}
  # The victim is read at the length it was trained at, not the config's default.
  assert analysis["badnets_seed0"]["setup"]["max_length"] == 16
  run("experiments.defend", *common, "--config.setup.suspects=oracle",
      "--config.sanitize.stopping.flag=target_class",
      f"--workdir={tiny['root'] / 'defend'}", cwd=ROOT)
  rows = json.loads((tiny["root"] / "defend" / "defend.json").read_text())
  assert rows[0]["detection"]["suspects"] == 8 and "ca" in rows[0]["after"]
  # The stop's flag reaches sanitize and names the column.
  variant = "ours (oracle suspects, target_class stop)"
  assert rows[0]["variant"] == variant
  report = json.loads((tiny["root"] / "defend" / variant / "badnets_seed0" / "result.json"
                       ).read_text())["report"]
  assert report["target_class"] in (0, 1) and report["config"]["stopping"]["flag"] == (
      "target_class")
  # The held-out sets are the test split less the stream, and the table says so.
  test = data.load_classification(str(tiny["data"]), "test", dataset="sst2")
  triggered = attacks.make_attack("badnets", target=1, seed=0).triggered_test(test)
  assert rows[0]["inputs"] == {"stream": 16, "held_clean": len(test) - 8,
                               "held_triggered": len(triggered) - 8, "clean_train": 16,
                               "calibration": 8}
  assert (f"CA on each victim's {len(test) - 8} held-out clean test inputs, ASR on its "
          f"{len(triggered) - 8} held-out triggered ones" in
          (tiny["root"] / "defend" / "defend.md").read_text())
  transformers_dir = tiny["root"] / "defend" / variant / "badnets_seed0"
  assert (transformers_dir / "model" / "model.safetensors").is_file()


def test_table2_columns(tiny):
  """Vanilla, the three baselines and both suspect sources, side by side with the
  paper's BERT row; each column's defended checkpoint is written."""
  workdir = tiny["root"] / "table2"
  baselines = [f"--config.baselines.{b}.finetune.{k}={v}" for b in ("fine_pruning", "meft", "pure")
               for k, v in (("epochs", 1), ("batch_size", 8))]
  run("experiments.table2", f"--victims_dirs={tiny['victims']}", *TINY, *baselines,
      "--config.baselines.meft.max_entropy_epochs=2", f"--workdir={workdir}", cwd=ROOT)
  rows = json.loads((workdir / "table2.json").read_text())
  columns = ["FP", "MEFT", "PURE", "ours (detector suspects)", "ours (oracle suspects)"]
  assert [r["variant"] for r in rows] == columns and all(r["wall_s"] > 0 for r in rows)
  assert len({json.dumps(r["before"]) for r in rows}) == 1  # one victim, one held-out set
  table = (workdir / "table2.md").read_text()
  assert "| dataset | attack | vanilla CA | vanilla ASR | FP CA | FP ASR | MEFT CA " in table
  assert "| sst2 | badnets (paper, BERT) | 0.9265 | 0.9967 | 0.9228 | 0.2636 |" in table
  assert "Bold: the lowest mean ASR among the columns whose mean CA is within 0.02" in table
  for column in columns:
    assert (workdir / column / "sst2" / "badnets_seed0" / "model" / "model.safetensors").is_file()


def test_audit_victims(tiny):
  """The owner's audit of the victim and of a clean model given the victim's
  stream, by both detectors: one record per run, each agreeing with the audit's
  own report, and the table over all of them."""
  run("experiments.attack", f"--data_dir={tiny['data']}", "--dataset=sst2",
      f"--model={tiny['model']}", "--attacks=clean", "--seeds=0", "--train_size=0",
      "--epochs=1", "--max_length=16", f"--workdir={tiny['root'] / 'clean'}", cwd=ROOT)
  workdir = tiny["root"] / "owner"
  setup = [f for f in TINY if f.startswith("--config.setup.")]
  setup[setup.index("--config.setup.clean_size=16")] = "--config.setup.clean_size=48"
  out = run("experiments.audit_victims", f"--victims_dirs={tiny['victims']}",
            f"--clean_dirs={tiny['root'] / 'clean'}", *setup, "--max_rounds=1", "--streams=mixed",
            f"--workdir={workdir}", cwd=ROOT)
  records = json.loads((workdir / "owner_audits.json").read_text())
  runs = {(r["name"], r["detector"], r["stream"]) for r in records}
  assert runs == {(name, d, s) for name in ("sst2/badnets_seed0",
                                             "sst2/clean_seed0 (badnets stream)")
                  for d in ("crowding", "heads") for s in ("mixed",)}
  for r in records:
    folder = workdir / owner.run_folder(r["name"], r["detector"], r["stream"])
    report = json.loads((folder / "audit" / "audit.json").read_text())
    assert report["detector"]["method"] == r["detector"]
    assert (r["incoming"], r["flagged"], r["holdout"]) == (
        16, report["verdict"]["flagged"], report["verdict"]["holdout"])
    assert r["backdoored"] == report["verdict"]["backdoored"]
    assert r["true_positive_rate"] is not None
    assert 0 <= r["suspects_triggered"] <= r["suspects"] <= r["flagged"]
    assert ("after" in r) == r["backdoored"] == (report["sanitize"] is not None)
  assert out.count("| sst2/") == len(records)
  assert (workdir / "owner_audits.md").read_text().count("| sst2/") == len(records)


def test_owner_streams_hold_the_stream_or_as_many_clean_inputs():
  clean = [data.TextExample(f"clean {i}", 0) for i in range(6)]
  triggered = [data.TextExample(f"cf {i}", 0, poisoned=True) for i in range(3)]
  rows = {"stream": clean[:3] + triggered, "held_clean": clean[3:]}
  texts, truth = owner.owner_stream(rows, "mixed")
  assert texts == [e.text for e in rows["stream"]] and truth.tolist() == [0, 0, 0, 1, 1, 1]
  texts, truth = owner.owner_stream(rows, "clean")
  assert texts == [f"clean {i}" for i in range(6)] and not truth.any()
  with pytest.raises(ValueError, match="stream must be one of"):
    owner.owner_stream(rows, "triggered")


def test_ablation_and_sweep(tiny):
  common = [f"--victims_dir={tiny['victims']}", *TINY, "--config.setup.suspects=oracle"]
  run("experiments.ablation", *common, f"--workdir={tiny['root'] / 'ablation'}", cwd=ROOT)
  rows = json.loads((tiny["root"] / "ablation" / "ablation.json").read_text())
  assert {r["variant"] for r in rows} == {"full method", "fine-tune only to repair",
                                          "alignment only",
                                          "head-wise fine-tuning only",
                                          "uniform fine-tuning only"}
  run("experiments.sweep", *common, "--alphas=0.5", "--taus=0.4",
      "--rate_pairs=1e-5:1e-4", f"--workdir={tiny['root'] / 'sweep'}", cwd=ROOT)
  rows = json.loads((tiny["root"] / "sweep" / "sweep.json").read_text())
  assert [r["variant"] for r in rows] == ["alpha=0.5", "tau=0.4", "lr=1e-05/0.0001"]
  assert (tiny["root"] / "sweep" / "sweep.png").is_file()


def test_detect_benchmark(tiny):
  """Every detector asked for is fitted, calibrated and measured on the victim; the
  table, the JSON and the ROC plot are written, and a rerun reads the runs back."""
  workdir = tiny["root"] / "detect"
  args = [f"--victims_dirs={tiny['victims']}", "--detectors=paper,dan,strip",
          "--fit_size=24", "--calibration_size=40", "--test_size=40", f"--workdir={workdir}"]
  out = run("experiments.detect", *args, cwd=ROOT)
  rows = json.loads((workdir / "detect.json").read_text())
  assert [r["detector"] for r in rows] == ["paper", "dan", "strip"]
  assert all(0 <= r["auroc"] <= 1 and r["sizes"]["clean"] == 40 for r in rows)
  assert "| sst2 | badnets | dan |" in out and (workdir / "roc_sst2_badnets.png").is_file()
  assert "calibrated at FPR 0.05 on 40 clean training rows" in out
  stored = json.loads((workdir / "sst2" / "badnets_seed0" / "dan" / "result.json").read_text())
  assert rows[1] == {**stored, "victim": "sst2/badnets_seed0", "model": str(tiny["model"]),
                     "dataset": "sst2", "attack": "badnets", "seed": 0}
  run("experiments.detect", *args, cwd=ROOT)
  assert json.loads((workdir / "detect.json").read_text()) == rows
  # A call for another victim only (--seeds) summarises the earlier victim's runs too.
  both = tiny["root"] / "two_victims"
  for seed in (0, 1):  # seed 1: the same model under another seed's name
    shutil.copytree(tiny["victims"] / "badnets_seed0", both / f"badnets_seed{seed}")
  result = json.loads((both / "badnets_seed1" / "result.json").read_text())
  result["config"]["seed"] = 1
  (both / "badnets_seed1" / "result.json").write_text(json.dumps(result))
  # --development marks that victim's runs (settings chosen on it): kept apart.
  out = run("experiments.detect", f"--victims_dirs={both}", *args[1:], "--seeds=1",
            "--development", cwd=ROOT)
  both_rows = json.loads((workdir / "detect.json").read_text())
  assert both_rows[:3] == rows and [(r["seed"], r["detector"]) for r in both_rows[3:]] == [
      (1, "paper"), (1, "dan"), (1, "strip")]
  assert [r.get("development") for r in both_rows] == [None] * 3 + [True] * 3
  assert "| sst2 | badnets | dan | " in out and "| sst2 | badnets | dan (development) | " in out


def test_demo_main_job(tiny):
  workdir = tiny["root"] / "demo"
  out = run("experiments.demo", f"--model={tiny['model']}", f"--data={tiny['data']}",
            "--dataset=sst2", "--train_size=64", "--eval_size=16", "--max_length=16",
            f"--workdir={workdir}", cwd=ROOT)
  summary = json.loads((workdir / "summary.json").read_text())
  victim, defense = summary["victim"], summary["defense"]
  held = defense["inputs"]
  # Every printed number names the set it was measured on, and is the stored one.
  assert (f"CA {victim['ca']:.3f} on {victim['test_rows']} clean test sst2 inputs, ASR "
          f"{victim['asr']:.3f} on {victim['triggered_rows']} triggered test sst2 inputs"
          in out)
  assert (f"4. sanitisation (CA on {held['held_clean']} held-out clean test sst2 inputs, "
          f"ASR on {held['held_triggered']} held-out triggered test sst2 inputs)" in out)
  for when in ("before", "after"):
    assert f"{defense[when]['ca']:.3f} | {defense[when]['asr']:.3f} |" in out
  report = (workdir / "report.md").read_text()
  for plot in ("analysis/cls_row_nospecial_frac_above.png", "defense.png"):
    assert f"![]({plot})" in report and (workdir / plot).read_bytes()[:4] == b"\x89PNG"
  (disk,) = [line for line in out.splitlines() if line.startswith("disk: ")]
  du_kib = int(subprocess.run(["du", "-sk", str(workdir)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
  number, unit = disk.split(" takes ")[1].split()[:2]
  scale = {"B": 1 / 1024, "KiB": 1, "MiB": 1024, "GiB": 1024 ** 2}[unit]
  assert abs(float(number) * scale - du_kib) <= 0.06 * du_kib + 8, (disk, du_kib)


def _parse_config(path, *args):
  values, argv = flags.FlagValues(), ["prog", *args]
  config_flags.DEFINE_config_file("config", path, flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


def test_defend_config_recipes():
  """The README's BadNets recipe is a named config (`defend.py:restarts`), overridable
  like the default one; an unknown name says which recipes exist."""
  path = str(ROOT / "experiments" / "configs" / "defend.py")

  def parse(*args):
    config = _parse_config(path, *args)
    return (sanitize_config(config.sanitize), detector_config(config.detector),
            restart_config(config.restarts))

  assert parse() == (SanitizeConfig(), DetectorConfig(), RestartConfig())
  recipe = parse(f"--config={path}:restarts", "--config.sanitize.stopping.max_rounds=2")
  assert recipe == (SanitizeConfig(stopping=Stopping(stop="fixed", max_rounds=2)),
                    DetectorConfig(), RestartConfig(runs=3, every_round=True))
  with pytest.raises(ValueError, match=r"Unknown keys \['max_rounds'\] in sanitize"):
    sanitize_config(ml_collections.ConfigDict({"max_rounds": 2}))
  with pytest.raises(ValueError, match=r"Unknown keys \['rate'\] in sanitize.finetune.rates"):
    sanitize_config(ml_collections.ConfigDict({"finetune": {"rates": {"rate": 1e-4}}}))
  with pytest.raises(flags.IllegalFlagValueError, match="defend.py:restarts"):
    parse(f"--config={path}:typo")


def test_decoder_config_recipe():
  """`defend_lm.py:collapse` is the decoder config with the answer-collapse
  overrides spelled out (the guide's longhand); an unknown name lists it."""
  path = str(ROOT / "experiments" / "configs" / "defend_lm.py")
  collapse = _parse_config(path, f"--config={path}:collapse").to_dict()
  assert collapse == _parse_config(
      path, "--config.setup.detector=answer_collapse", "--config.setup.rescore=answer_collapse",
      "--config.setup.watch_share=0.25", "--config.sanitize.stopping.stop_fraction=0.15",
      "--config.sanitize.stopping.max_rounds=3").to_dict()
  assert collapse != _parse_config(path).to_dict()
  with pytest.raises(flags.IllegalFlagValueError, match="defend_lm.py:collapse"):
    _parse_config(path, f"--config={path}:typo")


def test_decoder_classifier_baselines_budget_follows_our_rounds():
  """defend_lm's classifier baselines fine-tune for our epochs x rounds, overrides of
  either (and the collapse recipe's three rounds) included; a baseline's own
  epochs, named, win for that baseline alone."""
  path = str(ROOT / "experiments" / "configs" / "defend_lm.py")

  def epochs(*args):
    config = _parse_config(path, *args)
    return {n: baseline_config(config.baselines, n, LM_BASELINES).finetune.epochs
            for n in ("fine_pruning", "meft", "pure")}

  assert epochs() == {"fine_pruning": 4, "meft": 4, "pure": 4}
  assert epochs("--config.sanitize.finetune.epochs=3", "--config.sanitize.stopping.max_rounds=1",
                "--config.baselines.pure.finetune.epochs=5") == {
                    "fine_pruning": 3, "meft": 3, "pure": 5}
  assert epochs(f"--config={path}:collapse") == {"fine_pruning": 6, "meft": 6, "pure": 6}


def test_decoder_binaries(shared_data, tiny_chat_llama, tmp_path):
  """attack_lm -> analyze_lm -> defend_lm on a tiny random Llama with SmolLM2's
  tokenizer: each writes its files, and the decoder config parses."""
  victims = tmp_path / "victims"
  out = run("experiments.attack_lm", "--task=classification",
            f"--data_dir={shared_data / 'sst2' / 'clean'}", f"--model={tiny_chat_llama}",
            "--attacks=clean,badnets", "--train_size=16", "--test_size=16", "--max_length=96",
            "--learning_rate=1e-3", f"--workdir={victims}", cwd=ROOT)
  assert "| badnets |" in out and (victims / "summary.png").is_file()
  assert "LM victim classification/badnets seed 0" in out  # our INFO lines show,
  assert "checkpoint_manager.py" not in out  # orbax's do not
  out = run("experiments.analyze_lm", f"--victims_dir={victims}", "--size=2",
            "--views=gen_to_prompt", f"--workdir={tmp_path / 'analyze'}", cwd=ROOT)
  rows = json.loads((tmp_path / "analyze" / "table1.json").read_text())
  assert {r["reader"] for r in rows} == {"victim", "clean model"}
  assert "0.9149 -> 0.9921" in out  # the paper's BadNets numbers beside ours
  run("experiments.detect", f"--victims_dirs={victims}", "--detectors=paper,dan",
      "--fit_size=8", "--calibration_size=8", "--test_size=4", "--batch_size=8",
      f"--workdir={tmp_path / 'detect'}", cwd=ROOT)
  rows = json.loads((tmp_path / "detect" / "detect.json").read_text())
  assert [(r["victim"], r["dataset"], r["detector"]) for r in rows] == [
      ("sst2/classification_badnets_seed0", "sst2", d) for d in ("paper", "dan")]
  assert rows[0]["settings"] == {"view": "gen_to_prompt", "statistic": "frac_above"}
  assert rows[1]["sizes"] == {"fit": 8, "calibration": 8, "clean": 4, "triggered": 4}
  run("experiments.defend_lm", f"--victims_dir={victims}",
      "--variants=oracle,align_only,cleangen,graceful,muscle_lora,meft",
      "--config.baselines.graceful.pca_dims=4", "--config.baselines.meft.max_entropy_epochs=1",
      "--config.baselines.meft.finetune.epochs=1",
      "--config.setup.stream_clean=4", "--config.setup.stream_triggered=4",
      "--config.setup.max_suspects=4", "--config.setup.clean_size=8",
      "--config.setup.calibration_size=4", "--config.setup.eval_size=4",
      "--config.sanitize.align.steps=2", "--config.sanitize.finetune.epochs=1",
      "--config.sanitize.stopping.max_rounds=1", f"--workdir={tmp_path / 'defend'}", cwd=ROOT)
  rows = json.loads((tmp_path / "defend" / "defend_lm.json").read_text())
  assert [r["variant"] for r in rows] == ["oracle", "align_only", "cleangen", "graceful",
                                          "muscle_lora", "meft"]
  assert {"asr", "ca"} <= set(rows[0]["after"]) and rows[2]["detection"] is None
  graceful = json.loads((tmp_path / "defend" / "graceful" / "classification_badnets_seed0"
                         / "result.json").read_text())["report"]["filter"]
  removed = rows[3]["removed"]  # GraCeFul's filter, as its run reported it
  assert removed == {k: graceful[k] for k in ("removed", "poisoned_removed", "poisoned_rows",
                                              "rows")} and "removed" not in rows[4]
  assert (f"| {removed['removed']} of {removed['rows']} ({removed['poisoned_removed']} of "
          f"{removed['poisoned_rows']}) |") in (tmp_path / "defend" / "defend_lm.md").read_text()
  assert "| muscle_lora |" in (tmp_path / "defend" / "defend_lm.md").read_text()
  muscle = json.loads((tmp_path / "defend" / "muscle_lora" / "classification_badnets_seed0"
                       / "result.json").read_text())["report"]["muscle_lora"]
  assert (muscle["epochs"], muscle["batch_size"], muscle["learning_rate"]) == (1, 8, 1e-3)
  # A chat classifier's grid is Table 2(a)'s (the classifier baselines beside ours);
  # no generation victim, no Table 2(b).
  grid = json.loads((tmp_path / "defend" / "table2a_chat.json").read_text())
  assert set(grid["sst2/badnets"]) == {"vanilla", "meft", "oracle"}
  assert grid["sst2/badnets"]["meft"]["minutes"][0] > 0
  assert (tmp_path / "defend" / "table2a_chat.png").read_bytes()[:4] == b"\x89PNG"
  assert not (tmp_path / "defend" / "table2b.json").exists()
  # A later call with one variant reads its finished run back and keeps the other's row.
  run("experiments.defend_lm", f"--victims_dir={victims}", "--variants=oracle",
      f"--workdir={tmp_path / 'defend'}", cwd=ROOT)
  assert json.loads((tmp_path / "defend" / "defend_lm.json").read_text()) == rows
  assert (tmp_path / "defend" / "oracle" / "classification_badnets_seed0" / "model"
          / "tokenizer.json").is_file()


@pytest.mark.parametrize("module, bad", [
    ("experiments.scan", "--limit=0"), ("experiments.sanitize", "--alpha=2"),
    ("experiments.attack_lm", "--poison_rate=-0.1"), ("experiments.demo", "--eval_size=0")])
def test_binaries_refuse_out_of_range_flags(module, bad):
  """Sizes, rates and limits are bounded where the flag is defined: absl stops at
  parsing, naming the flag, before anything loads."""
  proc = subprocess.run([sys.executable, "-m", module, bad], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert proc.returncode != 0 and f"flag {bad}" in proc.stderr, proc.stderr[-2000:]
