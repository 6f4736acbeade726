"""The decoder harness: Table 1 statistics against a NumPy brute force, and a tiny
Llama victim through train -> analyze -> defend -> export, and the generation
baselines (CleanGen, GraCeFul, MuScleLoRA) beside it."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest
import transformers

import jax_attnalign
from jax_attnalign import attention_maps, metrics
from jax_attnalign.baselines import (CleanGenConfig, GraCeFulConfig, MuScleLoRAConfig,
                                     graceful_filter, muscle_lora)
from jax_attnalign.defense import DetectorConfig
from jax_attnalign.defense.sanitize import (Alignment, FineTuning, HeadClassification,
                                            SanitizeConfig, Stopping, scores_of)
from jax_attnalign.detection import ChatVictim, calibrate, make_detector
from jax_attnalign.models import PATTERNS, ModelConfig, build_model, run_with_hooks
from jax_attnalign.harness.pipeline_lm import (LMDefenseSetup, analyze_lm_victim, answer_inputs,
                                               choose_lm_suspects, defend_lm_victim,
                                               defender_examples, lm_defense_data,
                                               load_lm_victim, PreparedLMVictim,
                                               view_statistics)
from jax_attnalign.harness.baselines_lm import (defend_lm_with_cleangen, defend_lm_with_graceful,
                                                defend_lm_with_muscle_lora)
from jax_attnalign.harness.victims_lm import (LMVictimConfig, fine_tune_lm, train_lm_victim,
                                              training_arrays, victim_data)

CFG = ModelConfig(model_type="llama", vocab_size=41, hidden_size=24, num_layers=3, num_heads=4,
                  num_kv_heads=2, intermediate_size=29)


def _brute_force(maps, mask, special, tp, drop_special):
  """Per input: each layer's and the pooled model's (99th percentile, share > 0.99,
  mean) of pairwise head cosines of the answer rows over the prompt columns."""
  out = []
  for b in range(maps.shape[1]):
    rows = [t for t in range(maps.shape[3]) if mask[b, t] and t >= tp]
    cols = [s for s in range(maps.shape[4])
            if mask[b, s] and s < tp and not (drop_special and special[b, s])]
    blocks = []
    for layer in range(maps.shape[0]):
      heads = []
      for h in range(maps.shape[2]):
        block = maps[layer, b, h][np.ix_(rows, cols)].astype(np.float64)
        if drop_special:
          block = block / np.where(block.sum(1, keepdims=True) > 0, block.sum(1, keepdims=True), 1)
        heads.append(block.ravel())
      blocks.append(heads)

    def stats(vectors):
      pairs = [float(np.dot(u, v) / np.sqrt(np.dot(u, u) * np.dot(v, v)))
               for i, u in enumerate(vectors) for v in vectors[i + 1:]]
      return np.percentile(pairs, 99), np.mean(np.array(pairs) > 0.99), np.mean(pairs)

    out.append(([stats(heads) for heads in blocks], stats(sum(blocks, []))))
  return out


def test_generation_to_prompt_statistics_equal_a_numpy_brute_force():
  model = build_model(CFG)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"]
  rng = np.random.RandomState(0)
  tp, tg = 9, 5
  ids = rng.randint(3, 41, (4, tp + tg)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :3] = mask[2, :1] = 0  # left-padded prompts
  mask[1, tp + 3:] = mask[3, tp + 1:] = 0  # answers that ended early
  special = np.zeros_like(ids)
  special[:, 3] = special[0, tp - 1] = 1
  arrays = {"input_ids": ids, "attention_mask": mask, "special_mask": special,
            "prompt_lengths": np.full(4, tp, np.int32)}
  ours = view_statistics(model, params, arrays, ("gen_to_prompt", "gen_to_prompt_nospecial"),
                         batch_size=3)
  _, captured = run_with_hooks(model, params, {"input_ids": ids, "attention_mask": mask},
                               capture=PATTERNS)
  maps = np.asarray(attention_maps(captured))
  for view, drop in (("gen_to_prompt", False), ("gen_to_prompt_nospecial", True)):
    for b, (per_layer, pooled) in enumerate(_brute_force(maps, mask, special, tp, drop)):
      for k, statistic in enumerate(("percentile", "frac_above", "mean")):
        np.testing.assert_allclose(ours[view]["pooled"][statistic][b], pooled[k], atol=1e-5)
        np.testing.assert_allclose(ours[view]["layer"][statistic][b],
                                   [layer[k] for layer in per_layer], atol=1e-5)


def test_tiny_llama_victim_train_analyze_defend_export(shared_data, tiny_chat_llama,
                                                       tmp_path):
  cfg = LMVictimConfig(task="classification", attack="badnets",
                       data_dir=str(shared_data / "sst2" / "clean"), model=str(tiny_chat_llama),
                       train_size=16, test_size=24, epochs=1, batch_size=8,
                       learning_rate=1e-3, max_length=96)
  victim = tmp_path / "victim"
  train_lm_victim(cfg, victim)
  analysis = analyze_lm_victim(victim, ("gen_to_prompt", "full"), tmp_path / "analyze", size=4)
  # Each AUROC is triggered vs clean over the statistics (checked above against a
  # brute force) of the victim's answers to its first 4 clean and 4 triggered test
  # prompts, in the view named; the detector's-score AUROC is that of the
  # detector's own input scores. A swapped or mislabelled set would show.
  model, params, tokenizer, victim_cfg = load_lm_victim(victim)
  sets = victim_data(victim_cfg)
  inputs = [answer_inputs(model, params, tokenizer, sets[name][:4], victim_cfg)
            for name in ("clean", "triggered")]
  truth = np.r_[[False] * 4, [True] * 4]
  stats = [view_statistics(model, params, arrays, ("gen_to_prompt", "full"))
           for arrays in inputs]
  for view in ("gen_to_prompt", "full"):
    entry = analysis["views"][view]["percentile"]
    pooled = np.r_[stats[0][view]["pooled"]["percentile"],
                   stats[1][view]["pooled"]["percentile"]]
    layers = np.concatenate([s[view]["layer"]["percentile"] for s in stats])
    np.testing.assert_allclose(entry["auroc"], metrics.detection_auroc(pooled, truth))
    np.testing.assert_allclose(entry["auroc_per_layer"],
                               [metrics.detection_auroc(layers[:, i], truth) for i in (0, 1)])
  scores = [scores_of(model, params, arrays, "gen_to_prompt", "percentile") for arrays in inputs]
  np.testing.assert_allclose(
      analysis["views"]["gen_to_prompt"]["percentile"]["auroc_layer_mean"],
      metrics.detection_auroc(np.r_[scores[0], scores[1]], truth))
  assert (tmp_path / "analyze" / "gen_to_prompt_percentile.png").read_bytes()[:4] == b"\x89PNG"
  setup = LMDefenseSetup(stream_clean=4, stream_triggered=4, max_suspects=4, clean_size=8,
                         calibration_size=4, eval_size=4)
  config = SanitizeConfig(classify=HeadClassification(view="gen_to_prompt"),
                          align=Alignment(steps=2, batch_size=4),
                          finetune=FineTuning(loss="causal_lm", epochs=1, batch_size=8),
                          stopping=Stopping(max_rounds=1), score_batch_size=4)
  detector = DetectorConfig(view="gen_to_prompt")
  # The detector variant reuses a prepared victim; its 'before' must equal what the
  # oracle run, preparing nothing, measured itself.
  prepared = PreparedLMVictim(victim, dataclasses.replace(setup, suspects="detector"))
  with pytest.raises(ValueError, match=r"24 clean test prompts; the monitored stream takes 24"):
    PreparedLMVictim(victim, dataclasses.replace(setup, stream_clean=24))  # none held out
  with pytest.raises(ValueError, match=r"prepare it with PreparedLMVictim\(victim_dir, setup\)"):
    defend_lm_victim(victim, dataclasses.replace(setup, seed=1), config, detector=detector,
                     prepare=lambda: prepared)
  for suspects in ("oracle", "detector"):
    out = tmp_path / f"defend_{suspects}"
    result = defend_lm_victim(victim, dataclasses.replace(setup, suspects=suspects), config,
                              out, detector=detector,
                              prepare=(lambda: prepared) if suspects == "detector" else None)
    assert result["before"] == prepared.before
    assert set(result["before"]) == set(result["after"]) >= {"ca", "asr"}
    assert result["detection"]["suspects"] <= 4
    if suspects == "oracle":
      assert result["detection"]["suspects_triggered"] == 4
      assert len(result["report"]["rounds"]) == 1
      reloaded = transformers.AutoModelForCausalLM.from_pretrained(out / "model")
      assert reloaded.config.num_hidden_layers == 2
      assert transformers.AutoTokenizer.from_pretrained(out / "model").chat_template
      # The rounds' checkpoints (sanitize/) only resume a run: gone once it ends.
      assert sorted(p.name for p in out.iterdir()) == ["model", "result.json"]
    assert defend_lm_victim(victim, setup, config, out, detector=detector) == json.loads(
        (out / "result.json").read_text())
  # Another input detector picks the suspects: the stream's scores are DAN's, fitted
  # on the defender's clean fine-tuning prompts and calibrated on its calibration ones.
  dan_setup = dataclasses.replace(setup, detector="dan")
  defense_sets = lm_defense_data(model, params, tokenizer, victim_cfg, dan_setup)
  chosen, watched, report, _ = choose_lm_suspects(model, params, tokenizer, victim_cfg,
                                                  defense_sets, dan_setup, detector, 4)
  examples, truth = defense_sets["examples"], defense_sets["stream"]["poisoned"]
  chat = ChatVictim(model, params, tokenizer, batch_size=4, dataset="sst2")
  dan = make_detector("dan").fit(chat, examples["clean_train"])
  dan_scores = dan.score(chat, examples["stream"])
  assert report["detector"] == "dan"
  np.testing.assert_allclose(report["auroc"], metrics.detection_auroc(dan_scores, truth))
  threshold = calibrate(dan, chat, examples["calibration"], detector.fpr).threshold
  np.testing.assert_allclose(report["threshold"], threshold, rtol=1e-5)
  flagged = np.flatnonzero(dan_scores >= threshold)
  assert len(chosen["input_ids"]) == report["suspects"] == min(len(flagged), 4)
  assert len(watched["input_ids"]) == report["watched"] == 0
  # Kept out for the answer-collapse stop: a share of the flagged prompts (of the
  # triggered ones, for oracle suspects), drawn with the setup's seed; the
  # suspects are the rest, highest scores first.
  stream_ids = defense_sets["stream"]["input_ids"]
  rows = lambda part: [int(np.flatnonzero((stream_ids == r).all(1))[0])
                       for r in part["input_ids"]]
  for suspects, pool in (("detector", flagged[np.argsort(-dan_scores[flagged])]),
                         ("oracle", np.flatnonzero(truth))):
    kept_setup = dataclasses.replace(dan_setup, suspects=suspects, rescore="answer_collapse",
                                     watch_share=0.5, max_suspects=8)
    chosen, watched, report, _ = choose_lm_suspects(model, params, tokenizer, victim_cfg,
                                                    defense_sets, kept_setup, detector, 4)
    kept = np.random.default_rng(kept_setup.seed + 3).permutation(len(pool))[
        :round(0.5 * len(pool))]
    assert sorted(rows(watched)) == sorted(pool[kept].tolist())
    assert rows(chosen) == [i for j, i in enumerate(pool) if j not in kept]
    assert report["watched"] == len(kept) and report["suspects"] == len(pool) - len(kept)
    assert report["watched_triggered"] == truth[rows(watched)].sum()
  assert report["suspects_triggered"] == report["watched_triggered"] == 2  # oracle: 4 split
  # CleanGen on the same held-out prompts: 'before' is ours' before; with alpha
  # infinite no token is replaced and 'after' is plain greedy decoding again.
  never = defend_lm_with_cleangen(victim, setup, CleanGenConfig(alpha=math.inf),
                                  tmp_path / "cleangen_inf")
  assert never["before"] == never["after"] == result["before"]
  assert never["report"]["replacement_rate"] == 0.0
  # (A baseline takes the prepared victim too, and then its measured 'before'.)
  always = defend_lm_with_cleangen(victim, setup, CleanGenConfig(alpha=1e-9),
                                   tmp_path / "cleangen_all", prepare=lambda: prepared)
  assert always["before"] == prepared.before
  assert always["report"]["replacement_rate"] == 1.0
  assert not (tmp_path / "cleangen_all" / "model").exists()
  # GraCeFul and MuScleLoRA train a replacement from the pretrained checkpoint (not
  # the victim) on the victim's rows: each saved model equals the library function
  # run directly on those rows (GraCeFul: its filter, then the victim's recipe on
  # the kept rows; MuScleLoRA: aligned to the defender's clean rows).
  model, pretrained = jax_attnalign.load_pretrained(tiny_chat_llama, task="causal_lm")
  rows = victim_data(victim_cfg)["train"]
  arrays = training_arrays(rows, victim_cfg, tokenizer)
  saved = lambda name: jax_attnalign.load_pretrained(tmp_path / name / "model",
                                                     task="causal_lm")[1]
  same = lambda a, b: jax.tree_util.tree_map(
      lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), a, b)
  config = GraCeFulConfig(pca_dims=4)
  graceful = defend_lm_with_graceful(victim, setup, config, tmp_path / "graceful")
  keep, report = graceful_filter(model, pretrained, arrays, config,
                                 poisoned=np.array([e.poisoned for e in rows]))
  assert graceful["before"] == result["before"] and graceful["detection"] is None
  assert graceful["report"]["filter"] == {**report, "graceful": dataclasses.asdict(config),
                                          "steps": int(keep.sum()) // 8}
  assert report["poisoned_rows"] == sum(e.poisoned for e in rows) > 0
  expected, _ = fine_tune_lm(model, pretrained, {k: v[keep] for k, v in arrays.items()},
                             victim_cfg, None)
  same(saved("graceful"), expected)
  # The fine-tune's checkpoint went when the run finished; the kept rows stay, so
  # a rerun reads them instead of filtering again and retrains to the same model.
  assert sorted(p.name for p in (tmp_path / "graceful").iterdir()) == [
      "filter.npz", "model", "result.json"]
  (tmp_path / "graceful" / "result.json").unlink()
  again = defend_lm_with_graceful(victim, setup, config, tmp_path / "graceful")
  assert again["after"] == graceful["after"]
  config = MuScleLoRAConfig(epochs=1, batch_size=8, learning_rate=1e-3)
  muscle = defend_lm_with_muscle_lora(victim, setup, config, tmp_path / "muscle")
  clean = training_arrays(defender_examples(victim_cfg, setup)[:setup.clean_size], victim_cfg,
                          tokenizer)
  expected, report = muscle_lora(model, pretrained, arrays, clean, config)
  assert muscle["report"]["branches"] == report["branches"]
  assert set(muscle["after"]) == set(result["after"])
  same(saved("muscle"), expected)
  assert sorted(p.name for p in (tmp_path / "muscle").iterdir()) == ["model", "result.json"]
