"""Table 2(a)'s classifier baselines on a Listing-1 chat classifier: the chat LM read
as a classifier over its label words against the LM's own next-token logits of one
unpadded prompt, PURE's decoder row against a NumPy brute force on captured maps,
and Fine-Pruning, MEFT and PURE through the LM defense harness on a tiny victim."""

import dataclasses

import jax
import numpy as np
import pytest

import jax_attnalign
from jax_attnalign import data
from jax_attnalign.baselines import BASELINES, CleanFineTuning
from jax_attnalign.baselines.pure import AttentionNormalizedLoss, _head_variances
from jax_attnalign.data.types import TextExample
from jax_attnalign.detection.chat import ChatVictim, label_word_classifier
from jax_attnalign.harness import reporting_lm
from jax_attnalign.harness.baselines_lm import defend_lm_with_baseline
from jax_attnalign.harness.pipeline_lm import LMDefenseSetup, PreparedLMVictim, defender_examples
from jax_attnalign.harness.victims_lm import LMVictimConfig, train_lm_victim
from jax_attnalign.models import PATTERNS, apply_batch, attention_maps, build_model
from jax_attnalign.models import run_with_hooks

WORDS = "a fine gloomy film of wit and dull charm that drags yet sings".split()


def _examples(n, seed):
  rng = np.random.default_rng(seed)
  return [TextExample(" ".join(rng.choice(WORDS, rng.integers(3, 12))), int(rng.integers(0, 2)))
          for _ in range(n)]


def _right_padded(arrays):
  """The same rows moved to the left edge, padding after them."""
  ids, mask = arrays["input_ids"].copy(), arrays["attention_mask"].copy()
  for b in range(len(ids)):
    n = int(mask[b].sum())
    ids[b], mask[b] = np.r_[ids[b][-n:], ids[b][:-n]], np.r_[np.ones(n), np.zeros(len(ids[b]) - n)]
  return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def chat(tiny_chat_llama):
  model, params = jax_attnalign.load_pretrained(tiny_chat_llama, task="causal_lm")
  return ChatVictim(model, params, data.load_tokenizer(tiny_chat_llama), batch_size=4)


@pytest.mark.parametrize("tied", [True, False])
def test_label_word_classifier_gives_the_lms_label_logits_after_the_prompt(chat, tied):
  """Left- or right-padded, the class logits are the LM's logits of the label words'
  first tokens at the prompt's last token, then the log-sum-exp of every other
  token's ("any other answer"), computed on each prompt alone in float64."""
  model, params = chat.model, chat.params
  if not tied:  # an untied LM head: the classifier must read it, not the embeddings
    model = build_model(dataclasses.replace(model.config, tie_word_embeddings=False))
    params = model.init(jax.random.key(1), np.zeros((1, 4), np.int32))["params"]
  examples = _examples(5, 0)
  arrays = chat.class_inputs(examples)
  classifier = label_word_classifier(model, chat.label_ids)
  expected = []
  for b in range(len(examples)):
    ids = arrays["input_ids"][b:b + 1, arrays["attention_mask"][b] > 0]
    logits = apply_batch(model, params, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    full = np.asarray(logits.logits[0, -1], np.float64)
    others = np.delete(full, list(chat.label_ids))
    expected.append(np.r_[full[list(chat.label_ids)],
                          others.max() + np.log(np.exp(others - others.max()).sum())])
  for batch in (arrays, _right_padded(arrays)):
    got = np.asarray(apply_batch(classifier, params, batch).logits)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="label_ids is for task='classification'"):
    model.clone(label_ids=(1, 2)).init(jax.random.key(0), np.zeros((1, 4), np.int32))


def test_pure_reads_a_decoder_classifiers_last_token_row(chat):
  """The head variances and the attention penalty of a decoder classifier read each
  row's last real token's attention row (ddof 1 over the padded key slots, as the
  [CLS] row), from captured maps in float64, padded on either side."""
  classifier = label_word_classifier(chat.model, chat.label_ids)
  examples = _examples(6, 1)
  left = {**chat.class_inputs(examples), "labels": np.array([e.label for e in examples])}
  right = {**_right_padded(left), "labels": left["labels"]}
  weights = ((0.5, 0.0, 1.0, 0.25), (1.0, 1.0, 0.0, 0.5))
  for batch in (left, right):
    mask = batch["attention_mask"]
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    _, captured = run_with_hooks(classifier, chat.params, batch, capture=PATTERNS)
    maps = np.asarray(attention_maps(captured), np.float64)  # [L, B, N, T, S]
    rows = maps[:, np.arange(len(last)), :, last, :]  # [B, L, N, S]
    np.testing.assert_allclose(_head_variances(classifier, chat.params, batch, 4),
                               np.var(rows, axis=-1, ddof=1).mean(0), rtol=1e-4, atol=1e-9)
    _, metrics = AttentionNormalizedLoss(weights, 0.15)(classifier, chat.params, batch,
                                                        jax.random.key(0), True)
    penalty = 0.15 * np.sum(np.asarray(weights) * np.sqrt(np.sum(rows ** 2, axis=(0, 3))))
    np.testing.assert_allclose(float(metrics["attention_penalty"]), penalty, rtol=1e-5)


def test_classifier_baselines_on_a_tiny_chat_victim(shared_data, tiny_chat_llama, tmp_path):
  """Each runs through the LM harness on the defender's rows: 'before' is the
  prepared victim's, the saved model is the library function's own on the same
  prompts and labels, and 'after' is the LM's answers with those parameters."""
  cfg = LMVictimConfig(task="classification", attack="badnets",
                       data_dir=str(shared_data / "sst2" / "clean"), model=str(tiny_chat_llama),
                       train_size=16, test_size=12, epochs=1, batch_size=8,
                       learning_rate=1e-3, max_length=96)
  train_lm_victim(cfg, tmp_path / "victim")
  setup = LMDefenseSetup(stream_clean=4, stream_triggered=4, clean_size=8,
                         calibration_size=8, eval_size=4)
  prepared = PreparedLMVictim(tmp_path / "victim", setup)
  chat = ChatVictim(prepared.model, prepared.params, prepared.tokenizer, dataset="sst2")
  rows = defender_examples(prepared.cfg, setup)
  labelled = lambda part: {**chat.class_inputs(part),
                           "labels": np.array([e.label for e in part], np.int32)}
  tune = CleanFineTuning(epochs=1, batch_size=8)
  configs = {"fine_pruning": BASELINES["fine_pruning"][1](batch_size=8, finetune=tune),
             "meft": BASELINES["meft"][1](batch_size=8, max_entropy_epochs=1, finetune=tune),
             "pure": BASELINES["pure"][1](batch_size=8, threshold="relative", prune_step=2,
                                          finetune=tune)}
  for name, config in configs.items():
    result = defend_lm_with_baseline(name, tmp_path / "victim", setup, config, tmp_path / name,
                                     prepare=lambda: prepared)
    expected, report = BASELINES[name][0](label_word_classifier(chat.model, chat.label_ids),
                                          prepared.params, labelled(rows[:8]),
                                          labelled(rows[8:]), config)
    saved = jax_attnalign.load_pretrained(tmp_path / name / "model", task="causal_lm")[1]
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6),
                           saved, expected)
    assert result["before"] == prepared.before and result["detection"] is None
    assert result["after"] == prepared.held_metrics(expected)
    assert result["report"][name] == dataclasses.asdict(config)
    assert {k: result["report"][k] for k in report} == report
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == sorted(
        ["model", name, "result.json"])
    assert sorted(p.name for p in (tmp_path / name / name).iterdir()) == (
        ["max_entropy.json"] if name == "meft" else ["pruning.json"])


def test_chat_grid_is_table_2a_with_the_paper_llama_rows():
  """The chat classifiers' grid keeps datasets apart, leaves generation victims to
  Table 2(b), bolds the lowest ASR within two points of vanilla's CA (PURE lost 5),
  names the seeds of a column run on fewer victims, and puts the paper's Llama2-7B
  row beneath."""
  def row(dataset, seed, variant, ca, asr, task="classification"):
    return {"victim": f"{dataset}_{seed}", "task": task, "dataset": dataset,
            "attack": "badnets", "seed": seed, "variant": variant, "seconds": 60.0,
            "before": {"asr": 1.0, "ca": 0.88}, "after": {"asr": asr, "ca": ca}}
  rows = [row("sst2", s, "detector", 0.86, 0.5) for s in (1, 2)] + [
      row("sst2", 2, "meft", 0.87, 0.3), row("sst2", 2, "pure", 0.83, 0.1),
      row("ag_news", 0, "oracle", 0.85, 0.2),
      {**row(None, 0, "cleangen", 0.0, 0.1, task="refusal"), "before": {"asr": 1.0,
                                                                      "rouge_l": 0.3},
       "after": {"asr": 0.1, "rouge_l": 0.3}}]
  table, grid = reporting_lm.lm_grid_table(rows, reporting_lm.CHAT_GRID)
  lines = table.splitlines()
  assert lines[0].startswith("| dataset | attack | utility | vanilla ASR |")
  assert lines[2] == ("| sst2 | badnets | ca | 1.000 ± 0.000 | 0.880 ± 0.000 | — | — | "
                      "**0.300** (seed 2) | 0.870 | 0.100 (seed 2) | 0.830 | 0.500 ± 0.000 | "
                      "0.860 ± 0.000 | — | — | meft 1, pure 1, detector 1 | 1, 2 |")
  assert lines[3].startswith("| sst2 | badnets (paper, Llama2-7B) | CA | 0.8873 | 0.8691 | "
                             "0.4639 | 0.8319 | 0.2634 | 0.8517 | 0.3345 | 0.8237 | 0.2561 | "
                             "0.8519 | — | — |")
  assert lines[4].startswith("| ag_news | badnets | ca |")
  assert set(grid) == {"sst2/badnets", "ag_news/badnets"}  # the refusal victim is 2(b)'s
  assert "- pure: post-training" in table
  assert set(reporting_lm.lm_grid_table(rows)[1]) == {"refusal/badnets"}
