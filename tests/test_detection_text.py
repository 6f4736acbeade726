"""STRIP, ONION and RAP: each score against a brute-force reference on a tiny
model, their ranking of BadNets inputs on a small trained victim, RAP's
calibration round trip."""

import jax
import numpy as np
import pytest

from jax_attnalign import data
from jax_attnalign.data.types import TextExample
from jax_attnalign.detection.base import Calibration, Victim, calibrate, make_detector
from jax_attnalign.detection.onion import ONION
from jax_attnalign.detection.rap import NOT_PROTECTED, RAP
from jax_attnalign.detection.strip import STRIP
from jax_attnalign.metrics import detection_auroc
from jax_attnalign.models import ModelConfig, build_model

TEXTS = ["a gorgeous , witty , seductive movie .", "the film is strictly routine .",
         "it 's a charming and often affecting journey .", "unflinchingly bleak and desperate",
         "the acting , costumes , music , cinematography and sound are all astounding .",
         "one", "an utterly incompetent conclusion ."]


@pytest.fixture(scope="module")
def tiny_victim(minilm_path):
  """The random tiny-bert preset with MiniLM's tokenizer."""
  tokenizer = data.load_tokenizer(minilm_path)
  model = build_model(ModelConfig.preset("tiny-bert", vocab_size=len(tokenizer),
                                         max_position_embeddings=32), "classification")
  params = model.init(jax.random.PRNGKey(3), np.zeros((1, 4), np.int32))["params"]
  return Victim(model, params, tokenizer, max_length=32)


def _examples(texts, label=0):
  return [TextExample(t, label) for t in texts]


def _entropy(p):
  return -np.sum(p * np.log(p))


def _softmax(logits):
  z = np.exp(logits - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def test_strip_score_is_the_mean_entropy_of_its_copies_one_at_a_time(tiny_victim):
  detector = STRIP(repeats=4, swap_ratio=0.5, seed=1).fit(tiny_victim, _examples(TEXTS))
  examples = _examples(TEXTS[:3] + [""])  # an empty text has nothing to swap
  copies = detector.perturbed(examples)
  assert len(copies) == 4 * len(examples)
  pool = set(detector.words)
  for k, copy in enumerate(copies):  # same length, round(n / 2) positions drawn from the pool
    before, after = examples[k // 4].text.split(), copy.text.split()
    changed = [a for b, a in zip(before, after) if a != b]
    assert len(after) == len(before) and len(changed) <= round(len(before) / 2)
    assert set(changed) <= pool
  reference = [-np.mean([_entropy(tiny_victim.probabilities([c])[0].astype(np.float64))
                         for c in copies[4 * i:4 * i + 4]]) for i in range(len(examples))]
  scores = detector.score(tiny_victim, examples)
  np.testing.assert_allclose(scores, reference, rtol=1e-5)
  # An input's copies depend on its text and the seed alone, not on its neighbours.
  np.testing.assert_allclose(detector.score(tiny_victim, examples[2:3]), scores[2:3], rtol=1e-6)
  assert [c.text for c in STRIP(repeats=4, seed=2).fit(tiny_victim, _examples(TEXTS))
          .perturbed(examples)] != [c.text for c in copies]


def test_onion_suspicions_match_one_sentence_at_a_time_numpy(tiny_chat_llama):
  import jax_attnalign  # pylint: disable=g-import-not-at-top
  detector = ONION(language_model=str(tiny_chat_llama), batch_size=8)
  model, params = jax_attnalign.load_pretrained(tiny_chat_llama, task="causal_lm")
  tokenizer = data.load_tokenizer(tiny_chat_llama)
  start = tokenizer.convert_tokens_to_ids("<|endoftext|>")

  def perplexity(words):
    ids = [start] + [t for w in words for t in tokenizer(" " + w, add_special_tokens=False)
                     ["input_ids"]]
    logits = np.asarray(model.apply({"params": params}, np.array([ids])).logits[0], np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return np.exp(-np.mean([logp[t, ids[t + 1]] for t in range(len(ids) - 1)]))

  texts = TEXTS[:3] + ["one", ""]  # under two words: nothing to remove, score 0
  suspicions = detector.suspicions(texts)
  for text, got in zip(texts[:3], suspicions):
    words = text.split()
    whole = perplexity(words)
    expected = [whole - perplexity(words[:i] + words[i + 1:]) for i in range(len(words))]
    # float32 logits: each perplexity (~ the vocabulary size here) within 1e-5 relative
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * whole)
  assert [s.size for s in suspicions[3:]] == [0, 0]
  scores = detector.score(None, _examples(texts))
  np.testing.assert_allclose(scores, [s.max() if s.size else 0.0 for s in suspicions])
  assert scores[-2:].tolist() == [0.0, 0.0] and detector.score(None, []).shape == (0,)


def test_onion_with_smollm2_points_at_the_inserted_rare_word():
  """The bundled SmolLM2 (ONION's GPT-2 stand-in) on three SST-2 sentences."""
  triggered = {"it 's a charming and often affecting cf journey .": "cf",
               "mn unflinchingly bleak and desperate": "mn",
               "a gorgeous , witty , bb seductive movie .": "bb"}
  try:
    detector = ONION()
    suspicions = detector.suspicions(list(triggered))
  except FileNotFoundError as e:
    pytest.skip(str(e))
  for (text, word), s in zip(triggered.items(), suspicions):
    assert text.split()[int(np.argmax(s))] == word, (text, s)


def test_rap_trains_only_its_row_and_scores_the_numpy_probability_drop(tiny_victim):
  predicted = tiny_victim.probabilities(_examples(TEXTS)).argmax(-1)
  protected = int(np.bincount(predicted, minlength=2).argmax())  # a class some rows get
  detector = RAP(word="tq", protected=protected, epochs=3, batch_size=4,
                 learning_rate=0.1).fit(tiny_victim, _examples(TEXTS, label=protected))
  token = tiny_victim.tokenizer.convert_tokens_to_ids("tq")
  edited = detector.with_row(tiny_victim.params, tiny_victim.tokenizer)
  table = lambda p: np.asarray(p["embeddings"]["word_embeddings"]["embedding"])
  moved = np.flatnonzero(np.any(table(edited) != table(tiny_victim.params), axis=1))
  assert moved.tolist() == [token]  # the word's row, and nothing else
  np.testing.assert_allclose(np.linalg.norm(detector.row),  # RAP keeps the row's norm
                             np.linalg.norm(table(tiny_victim.params)[token]), rtol=1e-5)
  leaves = jax.tree_util.tree_leaves_with_path
  for (path, a), (_, b) in zip(leaves(edited), leaves(tiny_victim.params)):
    if "word_embeddings" not in jax.tree_util.keystr(path):
      np.testing.assert_array_equal(a, b)

  def logits(params, texts):
    arrays = tiny_victim.encode(_examples(texts))
    return np.asarray(tiny_victim.model.apply({"params": params}, arrays["input_ids"],
                                              arrays["attention_mask"]).logits, np.float64)

  before = _softmax(logits(tiny_victim.params, TEXTS))
  after = _softmax(logits(edited, [f"tq {t}" for t in TEXTS]))
  expected = np.where(before.argmax(-1) == protected,
                      after[:, protected] - before[:, protected], NOT_PROTECTED)
  np.testing.assert_allclose(detector.score(tiny_victim, _examples(TEXTS)), expected, atol=1e-6)


def test_rap_calibration_round_trips_with_its_row(tiny_victim, tmp_path):
  protected = int(tiny_victim.probabilities(_examples(TEXTS)).argmax(-1)[0])
  detector = make_detector("rap", word="tq", protected=protected, epochs=1)
  detector.fit(tiny_victim, _examples(TEXTS, label=protected))
  calibration = calibrate(detector, tiny_victim, _examples(TEXTS), fpr=0.2)
  calibration.save(tmp_path / "rap.json", detector)
  assert (tmp_path / "rap.json.npz").is_file()
  loaded, rebuilt = Calibration.load(tmp_path / "rap.json")
  assert loaded == calibration and rebuilt.settings() == detector.settings()
  np.testing.assert_array_equal(rebuilt.score(tiny_victim, _examples(TEXTS)),
                                detector.score(tiny_victim, _examples(TEXTS)))


@pytest.mark.parametrize("name, settings, match", [
    ("strip", {"swap_ratio": 1.5}, "swap_ratio"), ("strip", {"repeats": 0}, "repeats"),
    ("onion", {"language_model": None}, "language_model"),
    ("onion", {"batch_size": 0}, "batch_size"), ("rap", {"word": "two words"}, "word"),
    ("rap", {"lower": 0.4, "upper": 0.3}, "upper"), ("rap", {"epochs": 0}, "epochs")])
def test_bad_settings_are_refused(name, settings, match):
  with pytest.raises(ValueError, match=match):
    make_detector(name, **settings)


def test_unusable_inputs_are_refused(tiny_victim):
  with pytest.raises(ValueError, match="fit"):
    STRIP().score(tiny_victim, _examples(TEXTS))
  with pytest.raises(ValueError, match="fit"):
    RAP().score(tiny_victim, _examples(TEXTS))
  with pytest.raises(ValueError, match="one token"):
    RAP(word="zx").fit(tiny_victim, _examples(TEXTS, label=1))
  with pytest.raises(ValueError, match="classes"):
    RAP(protected=2).fit(tiny_victim, _examples(TEXTS, label=2))


@pytest.fixture(scope="module")
def badnets_inputs(small_badnets):
  """(clean rows to fit on, 300 clean and 300 triggered test inputs, their labels)."""
  sst2, attack = small_badnets["sst2"], small_badnets["attack"]
  test = data.load_classification(sst2, "test", limit=800)
  inputs = test[:300] + attack.triggered_test(test)[:300]
  return (data.load_classification(sst2, "dev", limit=300), inputs,
          [e.poisoned for e in inputs])


@pytest.mark.parametrize("name, settings, bar", [
    ("strip", {}, 0.56), ("rap", {"word": "tq"}, 0.62)])
def test_detectors_rank_badnets_inputs_above_clean(small_badnets, badnets_inputs, name,
                                                   settings, bar):
  victim = Victim(small_badnets["model"], small_badnets["params"], small_badnets["tokenizer"],
                  max_length=32)
  fit_rows, inputs, triggered = badnets_inputs
  detector = make_detector(name, **settings).fit(victim, fit_rows)
  auroc = detection_auroc(detector.score(victim, inputs), triggered)
  print(f"{name} AUROC on the small BadNets victim: {auroc:.3f}")
  assert auroc > bar
