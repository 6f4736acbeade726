"""The baselines (Fine-Pruning, MEFT, PURE) against NumPy references of their rules, resume,
the pruned checkpoint in transformers, each one lowering a small backdoor's ASR, and
their configs and columns in Table 2."""

import dataclasses
import importlib
import json

import chex
import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from conftest import SMALL_LENGTH
from test_sanitize import CFG, _data  # the tiny BERT and its random rows
from jax_attnalign import data, load_pretrained, save_pretrained, train
from jax_attnalign.baselines import (BASELINES, CleanFineTuning, FinePruningConfig, MEFTConfig,
                                     PUREConfig, fine_pruning, meft, pure)
from jax_attnalign.baselines.meft import max_entropy_loss
from jax_attnalign.baselines.pruning import prune_in_steps
from jax_attnalign.baselines.pure import AttentionNormalizedLoss
from jax_attnalign.harness import reporting, reporting_lm
from jax_attnalign.harness.configs import baseline_config, default_config
from jax_attnalign.harness.pipeline import DefenseSetup, defend_with_baseline, defense_data
from jax_attnalign.models import PATTERNS, attention_maps, build_model, run_with_hooks

# The module: the package's `meft` is the function.
meft_module = importlib.import_module("jax_attnalign.baselines.meft")
ONE_EPOCH = CleanFineTuning(epochs=1, batch_size=8)


@pytest.fixture(scope="module")
def tiny():
  model = build_model(CFG, "classification")
  params = model.init(jax.random.PRNGKey(0), np.ones((2, 12), np.int32))["params"]
  return model, jax.device_get(params), _data(24, 1), _data(16, 2)


@pytest.fixture(scope="module")
def small(small_badnets):
  """The small BadNets BERT (2 layers x 8 heads, 96 units) with 200 clean SST-2
  validation rows and 32 clean training rows from outside its training rows."""
  rows = data.load_classification(small_badnets["sst2"], "train")[-232:]
  enc = data.encode_classification(rows, small_badnets["tokenizer"], SMALL_LENGTH)
  split = lambda s: {k: v[s] for k, v in enc.items()}
  return {**small_badnets, "val": split(slice(0, 200)), "train": split(slice(200, None))}


def _predict(model, params, arrays) -> np.ndarray:
  return train.predict_logits(model, params, arrays).argmax(-1)


def _params_np(params):
  return jax.tree_util.tree_map(lambda x: np.array(x, np.float64), params)


def _numpy_prune_units(params, units):
  """A copy of params with units [(layer, unit)] zeroed, in NumPy."""
  out = _params_np(params)
  for layer, unit in units:
    mlp = out[f"layers_{layer}"]["mlp"]
    mlp["intermediate"]["kernel"][:, unit] = 0.0
    mlp["intermediate"]["bias"][unit] = 0.0
    mlp["output"]["kernel"][unit] = 0.0
  return out


def _numpy_prune_heads(params, heads):
  out = _params_np(params)
  for layer, head in heads:
    attn = out[f"layers_{layer}"]["attention"]
    attn["out"]["kernel"][head] = 0.0
    attn["value"]["kernel"][:, head] = 0.0
    attn["value"]["bias"][head] = 0.0
  return out


def test_max_entropy_loss_is_log_classes_minus_entropy():
  """Within 1e-6 of float64 NumPy, for 2 and 5 classes."""
  rng = np.random.RandomState(0)
  for classes in (2, 5):
    logits = rng.normal(0, 3, (7, classes))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    entropy = -np.sum(p * np.log(p), -1)
    expected = np.mean(np.log(classes) - entropy)
    assert abs(float(max_entropy_loss(logits.astype(np.float32))) - expected) < 1e-6


def test_prune_in_steps_stops_where_the_rule_says():
  """Accuracy known per pruned index: Fine-Pruning undoes the step that breaks the
  floor (an accuracy exactly at the floor stays); PURE restores that step's heads
  from its end until the floor holds, and stops there."""
  cost = np.array([0.0, 0.01, 0.02, 0.03, 0.0, 0.1, 0.05, 0.0])
  accuracy = lambda pruned: 0.9 - cost[pruned].sum()
  groups = [[0, 1], [2, 3], [4, 5], [6, 7]]
  pruned, trace = prune_in_steps(groups, accuracy, 0.84, 8, backtrack=False)
  assert np.flatnonzero(pruned).tolist() == [0, 1, 2, 3]  # 0.84 exactly: kept
  assert [t["pruned"] for t in trace] == [2, 4, 6]
  pruned, trace = prune_in_steps(groups, accuracy, 0.84, 8, backtrack=True)
  assert np.flatnonzero(pruned).tolist() == [0, 1, 2, 3, 4]
  assert [t["pruned"] for t in trace] == [2, 4, 6, 5]
  pruned, trace = prune_in_steps(groups, accuracy, 0.95, 8, backtrack=True)
  assert not pruned.any() and [t["pruned"] for t in trace] == [2, 1]
  pruned, _ = prune_in_steps(groups, accuracy, 0.0, 8, backtrack=True)
  assert pruned.all()


def _own_labels(small) -> dict:
  """The validation rows labelled with the victim's own predictions: accuracy is then
  agreement with the unpruned model (1.0 before pruning), so a limit between two
  steps' accuracies (from the NumPy reference) makes the stop known in advance."""
  val = small["val"]
  return {**val, "labels": _predict(small["model"], small["params"], val)}


def _first_change(accuracies: list[float]) -> float:
  """A limit under 1 that the first accuracy below 1 breaks: (1 + it) / 2."""
  below = [a for a in accuracies if a < 1.0]
  assert below, "pruning should change some prediction"
  return (1.0 + below[0]) / 2


def test_fine_pruning_equals_a_numpy_brute_force(small):
  """Units ranked by their mean activation over real tokens (captured, NumPy), last
  layer first, 10 a step; each step's accuracy from NumPy-zeroed weights; the
  pruning keeps the steps before the first one more than `max_drop` under the
  unpruned accuracy, `max_drop` set between two steps' drops."""
  model, params, val = small["model"], small["params"], _own_labels(small)
  _, captured = run_with_hooks(model, params, val, capture="layers.*.mlp.hidden")
  mask = val["attention_mask"][..., None].astype(np.float64)
  mean = np.stack([(np.asarray(captured[f"layers.{l}.mlp.hidden"]) * mask).sum((0, 1))
                   / mask.sum() for l in range(2)])  # [L, F]
  order = sorted(((l, f) for l in range(2) for f in range(96)),
                 key=lambda lf: (-lf[0], mean[lf], lf[1]))
  prefixes = [order[:k] for k in range(10, 200, 10)]
  accuracy = lambda units: float(np.mean(
      _predict(model, _numpy_prune_units(params, units), val) == val["labels"]))
  accuracies = [accuracy(units) for units in prefixes]
  max_drop = 1.0 - _first_change(accuracies)
  stop = next(i for i, a in enumerate(accuracies) if 1.0 - a > max_drop)
  assert stop > 0, "the first step should keep every prediction"
  config = FinePruningConfig(max_drop=max_drop, step_fraction=0.1, finetune=ONE_EPOCH)
  _, report = fine_pruning(model, params, small["train"], val, config)
  assert report["units_per_step"] == 10 and report["accuracy"] == 1.0
  assert [t["accuracy"] for t in report["trace"]] == pytest.approx(accuracies[:stop + 1])
  assert sorted((l, f) for l, units in enumerate(report["pruned_units"]) for f in units) \
      == sorted(prefixes[stop - 1])


def test_pure_equals_a_numpy_brute_force(small):
  """Heads ranked by the variance of their captured [CLS] rows (NumPy, ddof 1), a
  layer's highest kept, 4 a group; groups pruned while the NumPy-zeroed model's
  accuracy holds c, the breaking group restored from its highest-variance head
  until it holds again; the layer weights of the pruned model by PURE's formula."""
  model, params, val = small["model"], small["params"], _own_labels(small)

  def variances(p):
    maps = np.asarray(attention_maps(run_with_hooks(model, p, val, capture=PATTERNS)[1]))
    return np.var(maps[:, :, :, 0, :], axis=-1, ddof=1).mean(1)  # [L, N]

  variance = variances(params)
  order = [divmod(int(i), 8) for i in np.argsort(variance.ravel(), kind="stable")]
  kept = {(l, int(variance[l].argmax())) for l in range(2)}
  groups = [[h for h in order[s:s + 4] if h not in kept] for s in range(0, 16, 4)]
  accuracy = lambda heads: float(np.mean(
      _predict(model, _numpy_prune_heads(params, heads), val) == val["labels"]))
  threshold = _first_change([accuracy(sum(groups[:j + 1], [])) for j in range(4)])
  expected = []
  for group in groups:
    if accuracy(expected + group) >= threshold:
      expected = expected + group
      continue
    while len(group) > 1:
      group = group[:-1]
      if accuracy(expected + group) >= threshold:
        expected = expected + group
        break
    break
  assert 0 < len(expected) < 14, "the threshold should bite partway"
  config = PUREConfig(accuracy_threshold=threshold, prune_step=4, finetune=ONE_EPOCH)
  _, report = pure(model, params, small["train"], val, config)
  np.testing.assert_allclose(report["variance"], variance, rtol=1e-4, atol=1e-9)
  assert report["threshold"] == threshold
  assert sorted((l, h) for l, heads in enumerate(report["pruned_heads"]) for h in heads) \
      == sorted(expected)
  keep = np.ones((2, 8))
  for l, h in expected:
    keep[l, h] = 0
  v = (variances(_numpy_prune_heads(params, expected)) * keep).sum(1) / keep.sum(1)
  w = (1 / v) / np.sum(1 / v)
  np.testing.assert_allclose(report["layer_weights"], (w - w.min()) / (w.max() - w.min()),
                             atol=1e-5)


def test_attention_normalized_loss_equals_numpy(tiny):
  """Cross-entropy + 0.15 * sum_l,h w[l][h] sqrt(sum_b,s A[l,b,h,0,s]^2), from the
  captured maps in float64."""
  model, params, clean, _ = tiny
  weights = ((0.5, 0.0, 1.0, 0.25), (1.0, 1.0, 0.0, 0.5))
  loss = AttentionNormalizedLoss(weights, 0.15)
  value, metrics = jax.jit(lambda p, b: loss(model, p, b, jax.random.key(0), True))(
      params, clean)
  out, captured = run_with_hooks(model, params, clean, capture=PATTERNS)
  maps = np.asarray(attention_maps(captured), np.float64)  # [L, B, N, T, S]
  norms = np.sqrt(np.sum(maps[:, :, :, 0, :] ** 2, axis=(1, 3)))  # [L, N]
  logits = np.asarray(out.logits, np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.mean(logp[np.arange(len(logp)), clean["labels"]])
  penalty = 0.15 * np.sum(np.asarray(weights) * norms)
  np.testing.assert_allclose(float(metrics["attention_penalty"]), penalty, rtol=1e-5)
  np.testing.assert_allclose(float(value), ce + penalty, rtol=1e-5)


CONFIGS = {"fine_pruning": lambda epochs: FinePruningConfig(
               finetune=dataclasses.replace(ONE_EPOCH, epochs=epochs)),
           "meft": lambda epochs: MEFTConfig(stop_distance=1e-12, max_entropy_epochs=epochs,
                                             finetune=dataclasses.replace(ONE_EPOCH,
                                                                          epochs=epochs)),
           "pure": lambda epochs: PUREConfig(threshold="relative", prune_step=3,
                                             finetune=dataclasses.replace(ONE_EPOCH,
                                                                          epochs=epochs))}
DEFENSES = {"fine_pruning": fine_pruning, "meft": meft, "pure": pure}
TRACES = {"fine_pruning": 1, "meft": 2, "pure": 1}  # one compiled step per loss


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_interrupted_baseline_resumes_to_the_same_parameters(tiny, tmp_path, monkeypatch, name):
  """Killed after one fine-tune epoch (MEFT: after one max-entropy epoch), then run
  to the end in the same workdir: the parameters of an uninterrupted run. Each
  loss traces its train step once."""
  model, params, clean, val = tiny
  defend = DEFENSES[name]
  jax.clear_caches()
  train.TRACES.clear()
  straight, report = defend(model, params, clean, val, CONFIGS[name](2))
  assert train.TRACES["train_step"] == TRACES[name]
  if name == "meft":
    assert report["max_entropy_epochs"] == 2 and not report["reached"]

    class Killed(Exception):
      pass

    def kill(*args, **kwargs):
      raise Killed
    with monkeypatch.context() as patch:
      patch.setattr(meft_module, "finetune_on_clean", kill)
      with pytest.raises(Killed):
        defend(model, params, clean, val, CONFIGS[name](1), workdir=tmp_path)
  else:
    defend(model, params, clean, val, CONFIGS[name](1), workdir=tmp_path)
  resumed, resumed_report = defend(model, params, clean, val, CONFIGS[name](2),
                                   workdir=tmp_path)
  chex.assert_trees_all_close(resumed, straight, atol=1e-6)
  assert resumed_report["finetune_loss"] == pytest.approx(report["finetune_loss"], abs=1e-6)


@pytest.mark.parametrize("name", ["fine_pruning", "meft", "pure"])
def test_baseline_lowers_badnets_asr_through_the_pipeline(small_badnets, minilm_path, tmp_path,
                                                          name):
  """defend_with_baseline on the small BadNets BERT with the defender's 300 clean
  rows: ASR falls by more than 0.05 at CA within 0.05; the result and the
  defended checkpoint are written, the pruned weights are zero in transformers,
  which computes our logits; a second call reads the result back."""
  victim = tmp_path / "victim"
  save_pretrained(small_badnets["model"], small_badnets["params"], victim,
                  tokenizer=small_badnets["tokenizer"])
  setup = DefenseSetup(victim=str(victim), data_dir=str(small_badnets["sst2"]),
                       max_length=SMALL_LENGTH, clean_size=300, eval_size=400)
  tuning = CleanFineTuning(learning_rate=1e-3)
  config = {"fine_pruning": FinePruningConfig(step_fraction=0.2, finetune=tuning),
            "meft": MEFTConfig(finetune=tuning),
            "pure": PUREConfig(threshold="relative", finetune=tuning)}[name]
  result = defend_with_baseline(setup, name, tmp_path / "run", config)
  before, after, report = result["before"], result["after"], result["report"]
  print(f"{name}: CA {before['ca']:.3f} -> {after['ca']:.3f}, "
        f"ASR {before['asr']:.3f} -> {after['asr']:.3f} in {result['wall_s']:.1f} s")
  assert before["asr"] > 0.9
  assert after["asr"] < before["asr"] - 0.05 and after["ca"] > before["ca"] - 0.05
  assert result["inputs"]["clean_train"] == 300 and result["wall_s"] > 0
  assert defend_with_baseline(setup, name, tmp_path / "run") == json.loads(
      json.dumps(result, default=str))
  # The baseline's resume checkpoints went when the run finished; its decision stays.
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
      ["model", name, "result.json"])
  assert sorted(p.name for p in (tmp_path / "run" / name).iterdir()) == (
      ["max_entropy.json"] if name == "meft" else ["pruning.json"])
  # The exported checkpoint in transformers: pruned slices zero, our logits.
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path / "run" / "model").eval()
  layers = hf.bert.encoder.layer
  if name == "fine_pruning":
    assert report["units_pruned"] > 0
    for layer, units in enumerate(report["pruned_units"]):
      assert not layers[layer].intermediate.dense.weight[units].any()
      assert not layers[layer].output.dense.weight[:, units].any()
  if name == "pure":
    assert report["heads_pruned"] > 0
    for layer, heads in enumerate(report["pruned_heads"]):
      weight = layers[layer].attention.output.dense.weight.reshape(64, 8, 8)
      assert not weight[:, heads].any()
  if name == "meft":
    val = defense_data(setup, data.load_tokenizer(victim))["calibration"]
    probs = np.asarray(jax.nn.softmax(train.predict_logits(
        small_badnets["model"], small_badnets["params"], val), -1), np.float64)
    centroids = [probs[val["labels"] == c].mean(0) for c in (0, 1)]
    assert report["stop_distance"][0] == pytest.approx(
        np.linalg.norm(centroids[0] - centroids[1]), abs=1e-5)
    assert report["reached"] and report["stop_distance"][-1] < 0.01
  model, params = load_pretrained(tmp_path / "run" / "model", task="classification")
  held = defense_data(setup, data.load_tokenizer(victim))["held_clean"]
  rows = {k: held[k][:64] for k in ("input_ids", "attention_mask", "token_type_ids")}
  with torch.no_grad():
    theirs = hf(**{k: torch.tensor(v.astype(np.int64)) for k, v in rows.items()}).logits
  np.testing.assert_allclose(train.predict_logits(model, params, rows), theirs.numpy(),
                             atol=1e-4)


def test_baseline_configs_come_from_the_experiment_config():
  config = default_config()
  for name, (_, cls) in BASELINES.items():
    assert baseline_config(config.baselines, name) == cls()
  config.baselines.pure.threshold = "relative"
  config.baselines.meft.finetune.epochs = 1
  assert baseline_config(config.baselines, "pure") == PUREConfig(threshold="relative")
  assert baseline_config(config.baselines, "meft").finetune == CleanFineTuning(epochs=1)
  with pytest.raises(ValueError, match=r"Unknown keys \['c'\] in baselines.pure"):
    baseline_config(ml_collections.ConfigDict({"pure": {"c": 0.85}}), "pure")
  with pytest.raises(ValueError, match="PUREConfig.threshold must be one of"):
    PUREConfig(threshold="percent")
  variants = reporting.table2_variants(["pure", "oracle"], config)
  assert variants["PURE"] == ({}, ("pure", PUREConfig(threshold="relative")))
  assert variants["ours (oracle suspects)"][0] == {"suspects": "oracle"}
  with pytest.raises(ValueError, match=r"Unknown Table 2 columns \['ft'\]"):
    reporting.table2_variants(["ft"], config)


def test_table2_bolds_the_lowest_asr_within_two_points_of_vanilla_ca():
  """MEFT has the lowest ASR but lost 5 points of CA; PURE is the best of the rest.
  Vanilla is each victim's before, counted once; the paper's BERT row follows."""
  def row(victim, variant, ca, asr):
    return {"victim": victim, "dataset": "sst2", "attack": "badnets", "variant": variant,
            "before": {"ca": 0.90, "asr": 1.0}, "after": {"ca": ca, "asr": asr}}
  rows = [row(v, c, ca, asr) for v in ("seed0", "seed1") for c, ca, asr in (
      ("FP", 0.89, 0.30), ("MEFT", 0.85, 0.10), ("PURE", 0.885, 0.20))]
  table = reporting.columns_table(rows, ["FP", "MEFT", "PURE"])
  lines = table.splitlines()
  assert lines[2] == ("| sst2 | badnets | 0.900 ± 0.000 | 1.000 ± 0.000 | 0.890 ± 0.000 | "
                      "0.300 ± 0.000 | 0.850 ± 0.000 | 0.100 ± 0.000 | 0.885 ± 0.000 | "
                      "**0.200 ± 0.000** | 2 |")
  assert lines[3] == ("| sst2 | badnets (paper, BERT) | 0.9265 | 0.9967 | 0.9228 | 0.2636 | "
                      "0.9148 | 0.1523 | 0.9064 | 0.1698 | 5 runs |")
  # A stand-in attack (SmolLM2's HiddenKiller template) sits beside the paper's row
  # of the attack it stands in for.
  stand_in = [{**r, "dataset": "ag_news", "attack": "hiddenkiller_lm"} for r in rows]
  lines = reporting.columns_table(stand_in, ["FP"]).splitlines()
  assert lines[3] == ("| ag_news | hiddenkiller_lm (paper, BERT) | 0.8836 | 0.9501 | "
                      "0.8797 | 0.2903 | 5 runs |")


def test_summary_keeps_one_attack_of_two_datasets_apart_in_table_and_plot(tmp_path, monkeypatch):
  """BadNets on SST-2 and on AG News, one variant: two table rows and two bars
  (named by dataset), not one overwritten by the other."""
  drawn = {}
  monkeypatch.setattr(reporting.plots, "plot_metric_bars",
                      lambda runs, path, **kwargs: drawn.update(runs))
  rows = [{"victim": f"{d}_seed0", "dataset": d, "attack": "badnets", "variant": "PURE",
           "inputs": {"held_clean": 10, "held_triggered": 5, "stream": 8},
           "before": {"ca": 0.9, "asr": 1.0}, "after": {"ca": ca, "asr": asr}}
          for d, ca, asr in (("sst2", 0.85, 0.2), ("ag_news", 0.88, 0.4))]
  table = reporting.write_summary(rows, tmp_path, "defend", "Defense")
  assert "| sst2 | badnets | PURE |" in table and "| ag_news | badnets | PURE |" in table
  assert {k: v["ASR after"] for k, v in drawn.items()} == {
      "sst2 badnets\nPURE": [0.2], "ag_news badnets\nPURE": [0.4]}


def test_lm_defense_bars_keep_one_attack_of_two_tasks_apart():
  """VPI on refusal and on negsentiment, one variant: two table rows and two bars
  (named by task), not one overwritten by the other."""
  rows = [{"task": t, "attack": "vpi", "variant": "detector", "seed": 0, "detection": {},
           "before": {"asr": 0.9, "rouge_l": 0.3}, "after": {"asr": asr, "rouge_l": 0.29}}
          for t, asr in (("refusal", 0.1), ("negsentiment", 0.4))]
  table, bars = reporting_lm.lm_defense_table(rows)
  assert "| refusal | vpi | detector |" in table and "| negsentiment | vpi | detector |" in table
  assert {k: v["asr after"] for k, v in bars.items()} == {
      "refusal vpi\ndetector": [0.1], "negsentiment vpi\ndetector": [0.4]}


def test_lm_grid_bolds_the_lowest_asr_within_two_points_of_vanilla_utility():
  """Table 2(b): MuScleLoRA has the lowest ASR but lost 5 points of ROUGE-L; the oracle
  is the best of the rest. Vanilla is each victim's before, counted once; minutes are
  the defenses' mean wall time; the paper's Llama-2 and Mistral rows follow."""
  def row(seed, variant, rouge, asr, seconds):
    return {"victim": f"refusal_vpi_seed{seed}", "task": "refusal", "attack": "vpi",
            "seed": seed, "variant": variant, "seconds": seconds,
            "before": {"asr": 0.9 + 0.05 * seed, "rouge_l": 0.30},
            "after": {"asr": asr, "rouge_l": rouge}}
  rows = [row(s, c, rouge, asr, seconds) for s in (0, 1) for c, rouge, asr, seconds in (
      ("cleangen", 0.29, 0.30, 600), ("muscle_lora", 0.25, 0.05, 1800),
      ("oracle", 0.285, 0.10 + 0.1 * s, 3000))]
  # A variant outside the grid's columns, on a victim no column has: not in the
  # vanilla column or the seeds.
  rows.append(row(2, "oracle (answer_collapse stop)", 0.3, 0.0, 600))
  table, grid = reporting_lm.lm_grid_table(rows)
  lines = table.splitlines()
  assert lines[2] == ("| refusal | vpi | rouge_l | 0.925 ± 0.035 | 0.300 ± 0.000 | "
                      "0.300 ± 0.000 | 0.290 ± 0.000 | 0.050 ± 0.000 | 0.250 ± 0.000 | — | — "
                      "| — | — | **0.150 ± 0.071** | 0.285 ± 0.000 | cleangen 10, muscle_lora 30, "
                      "oracle 50 | 0, 1 |")
  assert lines[3].startswith("| refusal | vpi (paper, Llama2-7B) | CA | 0.9736 | 0.9125 | "
                             "0.2804 | 0.8729 | 0.1957 | 0.8315 | 0.2017 | 0.8715 | 0.1445 | "
                             "0.9010 | — | — |")
  assert "(paper, Mistral-7B)" in lines[4]
  assert grid["refusal/vpi"]["oracle"] == {"asr": [0.1, 0.2], "rouge_l": [0.285, 0.285],
                                           "minutes": [50.0, 50.0], "seeds": [0, 1]}
  assert grid["refusal/vpi"]["vanilla"]["seeds"] == [0, 1]
  assert set(grid["refusal/vpi"]) == {"vanilla", "cleangen", "muscle_lora", "oracle"}
  assert "- cleangen: decoding time" in table


def _victim(root, name, **cfg):
  (root / name).mkdir(parents=True)
  (root / name / "result.json").write_text(json.dumps({"config": cfg}))
  return root / name


def test_grid_victims_keep_datasets_apart_and_summaries_cover_earlier_calls(tmp_path):
  """SST-2's and AG News's badnets_seed0 are two runs, not one read back twice; the
  filters pick attacks and seeds; one dataset's name twice is an error; the summary
  rows are every finished run, this call's or an earlier one's."""
  sst2, ag_news, other = tmp_path / "sst2", tmp_path / "ag_news", tmp_path / "other"
  for root, dataset in ((sst2, "sst2"), (ag_news, "ag_news")):
    for attack, seed in (("badnets", 0), ("badnets", 1), ("cbat", 0), ("clean", 0)):
      _victim(root, f"{attack}_seed{seed}", attack=attack, dataset=dataset, seed=seed)
  found = reporting.grid_victims([sst2, ag_news])
  assert [key for key, _, _ in found] == [
      "sst2/badnets_seed0", "sst2/badnets_seed1", "sst2/cbat_seed0",
      "ag_news/badnets_seed0", "ag_news/badnets_seed1", "ag_news/cbat_seed0"]
  assert found[3][1] == ag_news / "badnets_seed0"
  assert [k for k, _, _ in reporting.grid_victims([sst2, ag_news], ["badnets"], ["1"])] == [
      "sst2/badnets_seed1", "ag_news/badnets_seed1"]
  _victim(other, "badnets_seed0", attack="badnets", dataset="sst2", seed=0)
  with pytest.raises(ValueError, match="are both sst2/badnets_seed0"):
    reporting.grid_victims([sst2, other])
  with pytest.raises(FileNotFoundError, match="with attacks \\['nws'\\]"):
    reporting.grid_victims([sst2], ["nws"])

  workdir = tmp_path / "table2"
  result = {"before": {"ca": 0.9, "asr": 1.0}, "after": {"ca": 0.88, "asr": 0.2}, "wall_s": 3.0}
  for key in ("sst2/badnets_seed0", "ag_news/cbat_seed0"):  # two calls' finished runs
    (workdir / "FP" / key).mkdir(parents=True)
    (workdir / "FP" / key / "result.json").write_text(json.dumps(result))
  rows = reporting.finished_rows(found, {"FP": None, "PURE": None}, workdir)
  assert [(r["victim"], r["dataset"], r["attack"], r["variant"], r["seed"]) for r in rows] == [
      ("sst2/badnets_seed0", "sst2", "badnets", "FP", 0),
      ("ag_news/cbat_seed0", "ag_news", "cbat", "FP", 0)]
  assert rows[0]["after"] == result["after"] and rows[0]["wall_s"] == 3.0
