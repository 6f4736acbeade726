"""Sanitisation rounds: head classes, stop rules, label-free mode, interrupt and resume."""

import dataclasses
import re

import chex
import jax
import numpy as np
import pytest

from conftest import SMALL_LENGTH
from jax_attnalign import save_pretrained
from jax_attnalign.analysis import (HeadClass, head_importance, head_similarity,
                                    max_other_similarity)
from jax_attnalign.defense import DetectorConfig, HeadRates, RestartConfig, calibrate_detector
from jax_attnalign.defense.sanitize import (Alignment, FineTuning, HeadClassification,
                                            SanitizeConfig, Stopping, classify, flagged_inputs,
                                            sanitize, scores_of, task_accuracy)
from jax_attnalign.models import PATTERNS, ModelConfig, attention_maps, build_model, run_with_hooks
from jax_attnalign import parallel, train
from jax_attnalign.errors import InputError
from jax_attnalign.harness.pipeline import DefenseSetup, defend_victim

CFG = ModelConfig(model_type="bert", vocab_size=41, hidden_size=24, num_layers=2,
                  num_heads=4, intermediate_size=23, max_position_embeddings=16)
# Small enough to finish in seconds; tau 0.5 puts every head in a class; every
# round fine-tunes (the paper's rounds), so the fine-tune's paths are exercised.
FAST = SanitizeConfig(classify=HeadClassification(view="cls_row_nospecial", tau=0.5),
                      align=Alignment(steps=3, batch_size=8),
                      finetune=FineTuning(epochs=1, batch_size=8, when="always"),
                      score_batch_size=8)


def rounds(n: int, stop: str = "fixed", config: SanitizeConfig = FAST) -> SanitizeConfig:
  return dataclasses.replace(config, stopping=Stopping(stop=stop, max_rounds=n))


def finetune(config: SanitizeConfig, **changes) -> SanitizeConfig:
  return dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, **changes))


def _data(n, seed):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, 41, (n, 12)).astype(np.int32)
  ids[:, 0] = 1  # [CLS]
  mask = np.ones_like(ids)
  mask[::3, 9:] = 0
  special = np.zeros_like(ids)
  special[:, 0] = 1
  return {"input_ids": ids, "attention_mask": mask, "special_mask": special,
          "labels": rng.randint(0, 2, n).astype(np.int32)}


@pytest.fixture(scope="module")
def setup():
  model = build_model(CFG, "classification")
  suspects, clean = _data(12, 0), _data(24, 1)
  params = model.init(jax.random.PRNGKey(0), clean["input_ids"][:2])["params"]
  return model, jax.device_get(params), suspects, clean


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("build, field, allowed", [
    (lambda: HeadClassification(view="cls_row_typo"), "HeadClassification.view",
     "'cls_row_nospecial'"),
    (lambda: HeadClassification(scope="head"), "HeadClassification.scope", "('layer', 'model')"),
    (lambda: HeadClassification(alpha=1.5), "HeadClassification.alpha", "[0.0, 1.0]"),
    (lambda: HeadClassification(tau=0.6), "HeadClassification.tau", "[0.0, 0.5]"),
    (lambda: HeadClassification(similarity_term="cos"), "HeadClassification.similarity_term",
     "('minmax', 'raw')"),
    (lambda: HeadClassification(importance_labels="gold"), "HeadClassification.importance_labels",
     "('predictions', 'given')"),
    (lambda: HeadClassification(normalization="l1"), "HeadClassification.normalization",
     "('global_max', 'layer_l2', 'none')"),
    (lambda: Alignment(steps=0), "Alignment.steps", ">= 1"),
    (lambda: Alignment(learning_rate=NAN), "Alignment.learning_rate", "finite"),
    (lambda: Alignment(batch_size=-8), "Alignment.batch_size", ">= 1"),
    (lambda: Alignment(trainable="all"), "Alignment.trainable",
     "('heads', 'suspicious', 'all_non_safe')"),
    (lambda: HeadRates(safe=-2e-4), "HeadRates.safe", ">= 0"),
    (lambda: HeadRates(suspicious=INF), "HeadRates.suspicious", "finite"),
    (lambda: FineTuning(other="warm"), "FineTuning.other", "('moderate', 'frozen')"),
    (lambda: FineTuning(loss="mse"), "FineTuning.loss", "('classification', 'causal_lm')"),
    (lambda: FineTuning(epochs=0), "FineTuning.epochs", ">= 1"),
    (lambda: FineTuning(batch_size=0), "FineTuning.batch_size", ">= 1"),
    (lambda: FineTuning(length_bucket=-1), "FineTuning.length_bucket", ">= 0"),
    (lambda: FineTuning(when="never"), "FineTuning.when", "('always', 'repair')"),
    (lambda: FineTuning(repair_tolerance=NAN), "FineTuning.repair_tolerance", "finite"),
    (lambda: Stopping(stop="never"), "Stopping.stop", "('threshold', 'fixed')"),
    (lambda: Stopping(max_rounds=0), "Stopping.max_rounds", ">= 1"),
    (lambda: Stopping(stop_fraction=1.5), "Stopping.stop_fraction", "[0.0, 1.0]"),
    (lambda: Stopping(flag="labels"), "Stopping.flag", "('detector', 'target_class')"),
    (lambda: SanitizeConfig(stages=("prune",)), "SanitizeConfig.stages", "('align', 'finetune')"),
    (lambda: SanitizeConfig(score_batch_size=0), "SanitizeConfig.score_batch_size", ">= 1"),
    (lambda: SanitizeConfig(align={"steps": 3}), "SanitizeConfig.align", "Alignment"),
    (lambda: DetectorConfig(view="last"), "DetectorConfig.view", "'cls_row_last_layer'"),
    (lambda: DetectorConfig(statistic="max"), "DetectorConfig.statistic",
     "('mean', 'percentile', 'frac_above')"),
    (lambda: DetectorConfig(fpr=0.0), "DetectorConfig.fpr", "(0.0, 1.0)"),
    (lambda: DetectorConfig(fpr=1.0), "DetectorConfig.fpr", "(0.0, 1.0)"),
    (lambda: DetectorConfig(calibration_size=1), "DetectorConfig.calibration_size", ">= 2"),
    (lambda: RestartConfig(runs=0), "RestartConfig.runs", ">= 1"),
    (lambda: RestartConfig(tolerance=INF), "RestartConfig.tolerance", "finite"),
])
def test_every_config_field_is_checked_when_built(build, field, allowed):
  """A bad value fails at construction, naming the field and what it allows."""
  with pytest.raises(ValueError, match=re.escape(field) + ".*" + re.escape(allowed)):
    build()


def test_classify_matches_materialised_similarity_and_importance(setup):
  model, params, suspects, _ = setup
  heads = classify(model, params, suspects, FAST, parallel.data_mesh())
  _, captured = run_with_hooks(model, params, suspects, capture=PATTERNS)
  cos = head_similarity(attention_maps(captured), "cls_row_nospecial",
                        attention_mask=suspects["attention_mask"],
                        special_mask=suspects["special_mask"])  # [B, L, N, N]
  np.testing.assert_allclose(heads["max_similarity"],
                             max_other_similarity(np.asarray(cos).mean(0)), atol=1e-5)
  batch = {k: v for k, v in suspects.items() if k != "special_mask"}
  np.testing.assert_allclose(heads["importance"],
                             head_importance(model, params, batch, use_predictions=True),
                             rtol=1e-4, atol=1e-6)
  assert set(np.unique(heads["labels"])) <= set(map(int, HeadClass))


def test_repair_finetunes_only_when_alignment_cost_clean_accuracy(setup):
  model, params, suspects, clean = setup
  config = finetune(rounds(1), when="repair")
  logits = model.apply({"params": params}, clean["input_ids"], clean["attention_mask"]).logits
  np.testing.assert_allclose(task_accuracy(model, params, clean, config, parallel.data_mesh()),
                             np.mean(np.argmax(logits, -1) == clean["labels"]), atol=1e-6)
  # Tolerance 1: no accuracy drop exceeds it, so the round is alignment alone;
  # tolerance -1: every drop exceeds it, so the round is the paper's.
  skipped, report = sanitize(model, params, suspects, clean,
                             finetune(config, repair_tolerance=1.0))
  entry = report["rounds"][0]
  assert entry["finetuned"] is False and "finetune_loss" not in entry
  assert entry["clean_accuracy_before_align"] == task_accuracy(model, params, clean, config,
                                                                parallel.data_mesh())
  aligned, _ = sanitize(model, params, suspects, clean,
                        dataclasses.replace(rounds(1), stages=("align",)))
  chex.assert_trees_all_equal(skipped, aligned)
  forced, report = sanitize(model, params, suspects, clean,
                            finetune(config, repair_tolerance=-1.0))
  assert report["rounds"][0]["finetuned"] is True
  paper, _ = sanitize(model, params, suspects, clean, rounds(1))
  chex.assert_trees_all_close(forced, paper, atol=1e-6)


def test_task_accuracy_of_a_causal_lm_is_each_rows_masked_token_accuracy():
  config = ModelConfig(model_type="llama", vocab_size=13, hidden_size=16, num_layers=1,
                       num_heads=2, num_kv_heads=1, intermediate_size=12)
  model = build_model(config)
  rng = np.random.RandomState(2)
  ids = rng.randint(0, 13, (6, 7)).astype(np.int32)
  mask = (rng.rand(6, 7) < 0.6).astype(np.int32)
  mask[0] = 0  # a row with no scored token counts as 0
  arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": mask}
  params = model.init(jax.random.PRNGKey(1), ids[:1])["params"]
  predict = lambda: np.argmax(model.apply({"params": params}, ids, np.ones_like(ids)).logits, -1)
  for t in range(1, 7):  # make about half of the tokens the model's own greedy choice
    ids[:, t] = np.where(rng.rand(6) < 0.5, predict()[:, t - 1], ids[:, t])
  predicted = predict()
  rows = [sum(predicted[b, t - 1] == ids[b, t] for t in range(1, 7) if mask[b, t])
          / max(mask[b, 1:].sum(), 1) for b in range(6)]
  got = task_accuracy(model, params, arrays,
                      SanitizeConfig(finetune=FineTuning(loss="causal_lm")), parallel.data_mesh())
  assert 0 < np.mean(rows) < 1  # the check can fail both ways
  np.testing.assert_allclose(got, np.mean(rows), atol=1e-6)


def test_no_safe_head_is_reported_and_changes_nothing(setup):
  model, params, suspects, clean = setup
  out, report = sanitize(model, params, suspects, clean,
                         dataclasses.replace(FAST, classify=dataclasses.replace(
                             FAST.classify, tau=0.0)))  # every head intermediate
  assert report["stopped"] == "empty_safe_set" and len(report["rounds"]) == 1
  assert report["rounds"][0]["counts"]["safe"] == 0
  chex.assert_trees_all_equal(out, params)


def test_threshold_stop_and_fixed_rounds(setup):
  model, params, suspects, clean = setup
  # Cosines never exceed 1: a threshold of 2 flags nothing, one of -1 everything.
  lax = calibrate_detector(np.array([2.0, 3.0]), view="cls_row_nospecial", fpr=0.5)
  _, report = sanitize(model, params, suspects, clean, FAST, detector=lax)
  assert report["stopped"] == "threshold" and len(report["rounds"]) == 1
  strict = calibrate_detector(np.array([-2.0, -1.0]), view="cls_row_nospecial", fpr=0.5)
  _, report = sanitize(model, params, suspects, clean, rounds(2, stop="threshold"),
                       detector=strict)
  assert report["stopped"] == "max_rounds" and len(report["rounds"]) == 2
  assert report["rounds"][-1]["flagged_fraction"] == 1.0
  assert len(report["rounds"][0]["align_loss"]) == 3
  assert len(report["rounds"][0]["finetune_loss"]) == 3  # 24 rows / batch 8, 1 epoch


def test_target_class_stop_reads_the_suspects_predicted_class(setup):
  """flag='target_class': the target is the class most suspects get before the first
  round, and a round's flagged fraction is the share of suspects the sanitised model
  still gives it, recomputed here from its own predictions; it drives the stop."""
  model, params, suspects, clean = setup
  # The random model's logit gaps differ in the 4th decimal: shifting the bias to
  # their 30th percentile makes 8 of the 12 suspects class 1 and 4 class 0.
  logits = train.predict_logits(model, params, suspects)
  params = jax.tree_util.tree_map(np.array, params)
  params["classifier"]["bias"][1] -= np.quantile(logits[:, 1] - logits[:, 0], 0.3)
  before = train.predict_logits(model, params, suspects).argmax(-1)
  assert np.bincount(before).tolist() == [4, 8]
  blind = calibrate_detector(np.array([2.0, 3.0]), view="cls_row_nospecial", fpr=0.5)
  config = dataclasses.replace(FAST, stopping=Stopping(stop="fixed", max_rounds=1,
                                                       flag="target_class"))
  out, report = sanitize(model, params, suspects, clean, config, detector=blind)
  assert report["target_class"] == 1
  after = train.predict_logits(model, out, suspects).argmax(-1)
  share = float(np.mean(after == 1))
  assert report["rounds"][0]["flagged_fraction"] == share  # the detector flags nothing
  assert share < 1.0
  for fraction, stopped in ((min(share + 0.01, 1.0), "threshold"), (share, "max_rounds")):
    config = dataclasses.replace(FAST, stopping=Stopping(max_rounds=2, stop_fraction=fraction,
                                                         flag="target_class"))
    _, report = sanitize(model, params, suspects, clean, config, detector=blind)
    assert report["stopped"] == stopped and len(report["rounds"]) == (
        1 if stopped == "threshold" else 2)


def test_target_class_stop_needs_a_classifier(setup):
  model, params, suspects, clean = setup
  config = dataclasses.replace(finetune(FAST, loss="causal_lm"),
                               stopping=Stopping(flag="target_class"))
  with pytest.raises(InputError, match="target_class.*classifier.*causal_lm"):
    sanitize(model, params, suspects, clean, config, detector=DetectorConfig(
        view="cls_row_nospecial", calibration_size=8))


def test_detector_flags_drive_sanitize_without_labels(setup):
  model, params, suspects, clean = setup
  scores = scores_of(model, params, clean, "cls_row_nospecial", "mean")
  detector = calibrate_detector(scores, view="cls_row_nospecial", fpr=0.25)
  unlabelled = {k: v for k, v in clean.items() if k != "labels"}
  flagged, all_scores = flagged_inputs(model, params, unlabelled, detector)
  np.testing.assert_allclose(all_scores, scores, rtol=1e-6)
  assert 0 < len(flagged["input_ids"]) == int((scores > detector.threshold).sum())
  out, report = sanitize(model, params, flagged, clean,
                         rounds(1), detector=detector)
  assert report["rounds"][0]["counts"]["safe"] > 0
  moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), out, params)
  assert max(jax.tree_util.tree_leaves(moved)) > 0


def test_rounds_and_seeds_reuse_one_compiled_align_and_finetune_step(setup, capsys):
  """The head classes are an argument of the alignment step and the per-head rates
  optimizer state, so two rounds, and a second run with another seed (a restart),
  trace each step once. The progress bars name the round and the step."""
  model, params, suspects, clean = setup
  jax.clear_caches()
  train.TRACES.clear()
  for seed in (0, 1):
    _, report = sanitize(model, params, suspects, clean,
                         dataclasses.replace(rounds(2), seed=seed))
    assert len(report["rounds"]) == 2
    assert all("align_loss" in r and "finetune_loss" in r for r in report["rounds"])
  assert train.TRACES == {"align_step": 1, "train_step": 1}
  bars = capsys.readouterr().err
  assert "sanitize round 2/2: align (eq. 7)" in bars
  assert "sanitize round 2/2: head-wise fine-tune" in bars


def test_interrupted_sanitize_resumes_to_the_same_parameters(setup, tmp_path):
  model, params, suspects, clean = setup
  config = rounds(3)
  straight, straight_report = sanitize(model, params, suspects, clean, config)

  class Killed(Exception):
    pass

  def kill_after_first_round(k, report):
    if k == 0:
      raise Killed

  with pytest.raises(Killed):
    sanitize(model, params, suspects, clean, config, workdir=tmp_path,
             on_round_end=kill_after_first_round)
  # A finished round keeps its own checkpoint, not its fine-tune's.
  assert (tmp_path / "rounds").is_dir() and not list(tmp_path.glob("finetune_round*"))
  # Resumed with 2 rounds it finishes there; called again with 3 it goes on.
  _, two = sanitize(model, params, suspects, clean, rounds(2), workdir=tmp_path)
  assert [r["round"] for r in two["rounds"]] == [0, 1] and two["stopped"] == "max_rounds"
  resumed, report = sanitize(model, params, suspects, clean, config, workdir=tmp_path)
  assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
  assert report["stopped"] == straight_report["stopped"] == "max_rounds"
  chex.assert_trees_all_close(resumed, straight, atol=1e-6)
  again, _ = sanitize(model, params, suspects, clean, config, workdir=tmp_path)  # finished
  chex.assert_trees_all_close(again, straight, atol=1e-6)


def test_defense_lowers_badnets_asr_on_real_sentences(small_badnets, minilm_path, tmp_path):
  """End to end on real SST-2: detector AUROC, then ASR/CA before and after."""
  victim = tmp_path / "victim"
  save_pretrained(small_badnets["model"], small_badnets["params"], victim)
  setup = DefenseSetup(victim=str(victim), tokenizer=str(minilm_path),
                       data_dir=str(small_badnets["sst2"]), max_length=SMALL_LENGTH)
  # DESIGN.md's alignment reading (every non-safe head trains): in this 2-layer
  # model trained from scratch, aligning the suspicious heads alone barely moves
  # ASR (0.97 -> 0.95 measured), unlike the pretrained MiniLM.
  result = defend_victim(setup, SanitizeConfig(align=Alignment(trainable="heads"),
                                               finetune=FineTuning(epochs=2)),
                         tmp_path / "defend")
  before, after, detection = result["before"], result["after"], result["detection"]
  print(f"detector AUROC {detection['auroc']:.3f} ({detection['suspects']} suspects, "
        f"{detection['suspects_triggered']} triggered); CA {before['ca']:.3f} -> "
        f"{after['ca']:.3f}, ASR {before['asr']:.3f} -> {after['asr']:.3f}; "
        f"rounds {len(result['report']['rounds'])} ({result['report']['stopped']})")
  assert before["asr"] > 0.9
  assert detection["auroc"] > 0.6 and detection["suspects"] > 0
  assert after["asr"] < before["asr"] - 0.1
  assert (tmp_path / "defend" / "model" / "config.json").exists()
  assert sorted(p.name for p in (tmp_path / "defend").iterdir()) == ["model", "result.json"]
