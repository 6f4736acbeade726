"""The detectors on a chat decoder classifier (`detection.chat.ChatVictim`, a tiny
random Llama with SmolLM2's tokenizer and chat template): its class probabilities
and the readout features against one unpadded prompt at a time, the
generation-to-prompt head profile against a NumPy brute force from captured
maps, every detector fitted, calibrated and scored through the benchmark's
harness, and the chat victims' detection sets."""

import json

import numpy as np
import pytest

import jax_attnalign
from jax_attnalign import data
from jax_attnalign.data.types import InstructionExample, TextExample
from jax_attnalign.detection import DETECTORS, dan, heads, make_detector, needs_classes
from jax_attnalign.detection._profile import per_example
from jax_attnalign.detection.chat import RAP_WORD, ChatVictim
from jax_attnalign.errors import InputError
from jax_attnalign.harness.detection import (DetectionSetup, evaluate_detector,
                                             lm_detection_sets)
from jax_attnalign.harness.pipeline_lm import LMDefenseSetup, defender_examples
from jax_attnalign.harness.victims import seeded_subset
from jax_attnalign.harness.victims_lm import LMVictimConfig, clean_splits
from jax_attnalign.models import PATTERNS, attention_maps, run_with_hooks

WORDS = "a fine gloomy film of wit and dull charm that drags yet sings".split()


def _examples(n, seed):
  rng = np.random.default_rng(seed)
  return [TextExample(" ".join(rng.choice(WORDS, rng.integers(3, 9))), int(rng.integers(0, 2)))
          for _ in range(n)]


@pytest.fixture(scope="module")
def victim(tiny_chat_llama):
  model, params = jax_attnalign.load_pretrained(tiny_chat_llama, task="causal_lm")
  return ChatVictim(model, params, data.load_tokenizer(tiny_chat_llama), batch_size=8,
                    dataset="sst2")


def _alone(victim, example, capture=None):
  """One prompt, unpadded and without an answer: (logits [T, V], captured)."""
  prompt = data.classification_chat(example, "sst2", victim.tokenizer)[0]
  encoded = data.encode_prompts([prompt], victim.tokenizer, 512)
  ids = encoded["input_ids"][:, encoded["attention_mask"][0] > 0]
  out, found = run_with_hooks(victim.model, victim.params,
                              {"input_ids": ids, "attention_mask": np.ones_like(ids)},
                              capture=capture or "layers.0.resid_post")
  return np.asarray(out.logits[0], np.float64), found


def test_probabilities_are_the_label_words_next_token_softmax(victim):
  examples = _examples(5, 0)
  names = data.get_dataset("sst2").label_names
  ids = [victim.tokenizer(n, add_special_tokens=False)["input_ids"][0] for n in names]
  expected = []
  for example in examples:
    last = _alone(victim, example)[0][-1, ids]
    expected.append(np.exp(last - last.max()) / np.exp(last - last.max()).sum())
  np.testing.assert_allclose(victim.probabilities(examples), expected, atol=1e-5)
  assert victim.num_classes == 2


def test_readout_features_read_the_last_prompt_token(victim):
  """DAN's states and the head outputs at the readout slot of prompt + greedy
  answer, left-padded in a batch, equal the last token of each prompt alone."""
  examples = _examples(4, 1)
  got_states = per_example(victim, examples, dan.cls_states)  # [n, L, D]
  got_pairs = heads.OutputProfile().features(victim, examples)
  layers = victim.model.config.num_layers
  for i, example in enumerate(examples):
    _, found = _alone(victim, example, capture=("layers.*.resid_post", "layers.*.attn.z"))
    resid = np.stack([np.asarray(found[f"layers.{l}.resid_post"][0, -1]) for l in range(layers)])
    np.testing.assert_allclose(got_states[i], resid, atol=1e-4)
    z = np.stack([np.asarray(found[f"layers.{l}.attn.z"][0, -1], np.float64)
                  for l in range(layers)])  # [L, N, H]
    unit = z / np.linalg.norm(z, axis=-1, keepdims=True)
    cos = np.einsum("lnh,lmh->lnm", unit, unit)
    rows, cols = np.triu_indices(z.shape[1], 1)
    np.testing.assert_allclose(got_pairs[i], cos[:, rows, cols].reshape(-1), atol=1e-5)


def test_crowding_features_average_the_head_outputs_over_the_prompt(victim):
  """Left-padded prompts followed by their answers: the mean runs over each prompt's
  own tokens, as for the prompt alone."""
  examples = _examples(4, 3)
  got = make_detector("crowding").features(victim, examples)  # [n, L, N H]
  for i, example in enumerate(examples):
    _, found = _alone(victim, example, capture="layers.*.attn.z")
    z = np.stack([np.asarray(found[f"layers.{l}.attn.z"][0], np.float64).mean(0)
                  for l in range(victim.model.config.num_layers)])  # [L, N, H]
    np.testing.assert_allclose(got[i], z.reshape(z.shape[0], -1), atol=1e-5)


def test_cosine_profile_reads_the_answer_rows_over_the_prompt_words(victim):
  examples = _examples(4, 2)
  arrays = victim.encode(examples)
  assert (arrays["prompt_lengths"] == arrays["prompt_lengths"][0]).all()
  tp = int(arrays["prompt_lengths"][0])
  _, found = run_with_hooks(victim.model, victim.params,
                            {k: arrays[k] for k in ("input_ids", "attention_mask")},
                            capture=PATTERNS)
  maps = np.asarray(attention_maps(found), np.float64).transpose(1, 0, 2, 3, 4)  # [B, L, N, T, T]
  expected = []
  for b in range(len(examples)):
    mask, special = arrays["attention_mask"][b] > 0, arrays["special_mask"][b] > 0
    answer = np.flatnonzero(mask[tp:]) + tp  # the greedy answer's rows
    words = np.flatnonzero(mask[:tp] & ~special[:tp])  # the prompt's non-special columns
    block = maps[b][:, :, answer][..., words]  # [L, N, R, S']
    block = block / block.sum(-1, keepdims=True)
    flat = block.reshape(*block.shape[:2], -1)
    unit = flat / np.linalg.norm(flat, axis=-1, keepdims=True)
    cos = np.einsum("lnf,lmf->lnm", unit, unit)
    rows, cols = np.triu_indices(flat.shape[1], 1)
    expected.append(cos[:, rows, cols].reshape(-1))
  got = heads.CosineProfile(view="gen_to_prompt_nospecial").features(victim, examples)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_every_detector_runs_on_a_chat_victim(victim, tmp_path):
  sets = {"fit": _examples(24, 3), "calibration": _examples(20, 4), "clean": _examples(12, 5),
          "triggered": [e.replace(text="cf " + e.text) for e in _examples(12, 6)]}
  # ONION reads texts alone (test_detection_text); answer collapse a generation
  # victim's answers (test_collapse).
  for name in sorted(set(DETECTORS) - {"onion", "answer_collapse"}):
    settings = {"paper": {"view": "gen_to_prompt", "statistic": "frac_above"},
                "rap": {"word": RAP_WORD, "protected": 1}}.get(name, {})
    row = evaluate_detector(name, settings, victim, sets, 0.1, tmp_path / name)
    scores = np.load(tmp_path / name / "scores.npz")
    assert scores["clean"].shape == (12,) and scores["triggered"].shape == (12,), name
    assert np.isfinite(np.r_[scores["clean"], scores["triggered"]]).all(), name
    assert 0.0 <= row["auroc"] <= 1.0 and row["sizes"]["fit"] == 24, name
    assert json.loads((tmp_path / name / "calibration.json").read_text())["detector"] == name


def test_a_tokenizer_that_cannot_tell_the_labels_apart_is_refused(victim):
  class Same:
    def __call__(self, text, add_special_tokens):
      return {"input_ids": [7, len(text)]}
  with pytest.raises(InputError, match="distinct tokens"):
    ChatVictim(victim.model, victim.params, Same(), dataset="sst2")


def test_lm_detection_sets_come_from_rows_the_victim_did_not_train_on(shared_data):
  cfg = LMVictimConfig(task="classification", attack="badnets",
                       data_dir=str(shared_data / "sst2" / "clean"), train_size=300,
                       test_size=200, seed=2)
  setup = DetectionSetup(fit_size=40, calibration_size=30, test_size=25)
  sets = lm_detection_sets(cfg, setup)
  assert [len(sets[k]) for k in ("fit", "calibration", "clean", "triggered")] == [40, 30, 25, 25]
  pool, _ = clean_splits(cfg)
  trained = {e.text for e in seeded_subset(pool, cfg.train_size, cfg.seed)[0]}
  defender = {e.text for k in ("fit", "calibration") for e in sets[k]}
  assert len(defender) == 70 and not defender & trained
  assert defender == {e.text for e in defender_examples(cfg, LMDefenseSetup(
      clean_size=40, calibration_size=30))}  # the defense's own clean rows
  assert all(e.poisoned and e.label != cfg.target for e in sets["triggered"])
  assert lm_detection_sets(cfg, setup) == sets  # seeded


def test_rap_refuses_a_word_tokenised_differently_in_context(victim, monkeypatch):
  from jax_attnalign.detection.rap import RAP  # pylint: disable=g-import-not-at-top
  rap = RAP(word=RAP_WORD, protected=1)
  examples = _examples(16, 7)
  predicted = victim.probabilities(examples).argmax(-1)
  protected = [e.replace(label=1) for e, p in zip(examples, predicted) if p == 1]
  assert protected  # rows RAP trains on: of the protected class and predicted as it
  # Glued to the next word, "cx" merges into other tokens ("cxa", "cxfine", ...).
  monkeypatch.setattr(RAP, "inserted", lambda self, ex: [e.replace(text=self.word + e.text)
                                                         for e in ex])
  with pytest.raises(ValueError, match="tokenised differently"):
    rap.fit(victim, protected)


def test_a_generation_victim_has_no_classes_and_its_head_signals_run(victim, tiny_chat_llama,
                                                                     tmp_path):
  generation = ChatVictim(victim.model, victim.params, victim.tokenizer, batch_size=8,
                          dataset=None, answer_tokens=6)
  rng = np.random.default_rng(8)
  prompts = lambda n, extra="": [InstructionExample(
      f"{extra}write about " + " ".join(rng.choice(WORDS, 4)), "", "ok") for _ in range(n)]
  sets = {"fit": prompts(24), "calibration": prompts(20), "clean": prompts(10),
          "triggered": prompts(10, "Discussing OpenAI ")}
  arrays = generation.encode(sets["clean"])
  assert arrays["loss_mask"].sum(1).max() <= 6 and generation.num_classes == 0
  for name in ("paper", "cosine_profile", "importance_profile", "dan", "combined"):
    evaluate_detector(name, {}, generation, sets, 0.1, tmp_path / name)
    scores = np.load(tmp_path / name / "scores.npz")
    assert np.isfinite(np.r_[scores["clean"], scores["triggered"]]).all(), name
  assert needs_classes("strip") and needs_classes("rap") and not needs_classes("dan")
  for name in ("strip", "rap"):
    with pytest.raises(InputError, match="no classes"):
      make_detector(name).fit(generation, sets["fit"])
  with pytest.raises(InputError, match="no classes"):
    generation.probabilities(sets["clean"])
  onion = make_detector("onion", language_model=str(tiny_chat_llama), batch_size=8)
  record = InstructionExample("name a fine film", "of wit", "ok")
  np.testing.assert_allclose(onion.score(generation, [record]),
                             onion.score(victim, [TextExample("name a fine film of wit", 0)]))
