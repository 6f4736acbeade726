"""NWS's in-context substitutions against a NumPy brute force on a tiny random Llama."""

import functools

import jax
import numpy as np
import pytest
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from jax_attnalign import attacks
from jax_attnalign.attacks import lm_substitutes
from jax_attnalign.models import ModelConfig, build_model

WORDS = ("movie plot actors story scenes music camera ending dialogue humour film picture "
         "cast script stars").split()
TEXTS = ["the movie plot was fine .", "it is not .", "the camera and the music carry the story .",
         "great acting , dull ending ."]


@pytest.fixture(scope="module")
def tiny():
  """A byte-level BPE tokenizer whose words are single tokens, and a tiny random Llama."""
  bpe = tokenizers.Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  corpus = [" " + " ".join(WORDS + ["the", "was", "fine", "and", "it", "is", "not", "great", "acting",
                              "dull", "carry", ",", "."])] * 20
  bpe.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<|endoftext|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe,
                                                   eos_token="<|endoftext|>")
  config = ModelConfig(model_type="llama", vocab_size=len(tokenizer), hidden_size=16,
                       num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=24,
                       max_position_embeddings=64, norm_eps=1e-5, pad_token_id=0,
                       bos_token_id=0, eos_token_id=(0,))
  model = build_model(config, "causal_lm")
  params = jax.jit(model.init)(jax.random.PRNGKey(3), np.zeros((1, 4), np.int32))["params"]
  return model, params, tokenizer


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, ids):
  return model.apply({"params": params}, ids).logits


def _log_probs(model, params, ids: list[int]) -> np.ndarray:
  """[T, V] log p(next token) for one unpadded row, log-softmax in NumPy (float64)."""
  logits = np.asarray(_forward(model, params, np.asarray([ids], np.int32))[0], np.float64)
  logits -= logits.max(-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


VOCABULARY = ("movie", "plot", "music", "camera", "ending", "picture", "script")


def _next_word_log_probs(model, params, tokenizer, before: list[int], own: int,
                         allowed: np.ndarray) -> np.ndarray:
  """[V] log p(next token | before) with the tokens not allowed and `own` at -inf."""
  logp = _log_probs(model, params, before)[-1].copy()
  logp[~allowed] = -np.inf
  logp[own] = -np.inf
  return logp


def test_vocabulary_equals_brute_force(tiny):
  model, params, tokenizer = tiny
  clean = TEXTS + ["the picture and the cast .", "a fine script .", "the stars ."] * 2
  vocabulary = lm_substitutes.nws_vocabulary(
      model, params, tokenizer, TEXTS, clean_texts=clean, size=3, num_candidates=6,
      max_document_frequency=0.2, batch_size=3, bucket=8)
  start = tokenizer.convert_tokens_to_ids("<|endoftext|>")
  allowed = lm_substitutes.candidate_tokens(tokenizer)
  proposed = {}
  for text in TEXTS:
    words = text.split()
    ids = lm_substitutes.word_ids(tokenizer, words)
    found = set()
    for at in attacks.NWS.substitutable(words):
      logp = _next_word_log_probs(model, params, tokenizer, [start] + sum(ids[:at], []),
                                  ids[at][0], allowed)
      found.update(tokenizer.decode([t]).strip() for t in np.argsort(-logp, kind="stable")[:6])
    for word in found:
      proposed[word] = proposed.get(word, 0) + 1
  documents = {w: sum(w in t.split() for t in clean) for w in proposed}
  kept = [w for w in proposed if len(w) >= 4 and 1 <= documents[w] <= 0.2 * len(clean)]
  assert len(kept) >= 3  # the check below compares a real choice
  assert vocabulary == sorted(kept, key=lambda w: (-proposed[w], w))[:3]
  with pytest.raises(ValueError, match="rare enough for a vocabulary of 40"):
    lm_substitutes.nws_vocabulary(model, params, tokenizer, TEXTS, clean_texts=clean,
                                  size=40, batch_size=3, bucket=8)


def test_substitutions_equal_brute_force(tiny):
  model, params, tokenizer = tiny
  record = lm_substitutes.nws_rewrites(model, params, tokenizer, TEXTS, vocabulary=VOCABULARY,
                                       max_substitutions=2, num_candidates=3, batch_size=3,
                                       bucket=8)
  start = tokenizer.convert_tokens_to_ids("<|endoftext|>")
  allowed = (lm_substitutes.candidate_tokens(tokenizer)
             & lm_substitutes.vocabulary_tokens(tokenizer, VOCABULARY))
  assert record["settings"]["vocabulary"] == list(VOCABULARY)
  assert set(record["rewrites"]) == {t for t in TEXTS if attacks.NWS.substitutable(t.split())}
  for text, subs in record["substitutions"].items():
    words = text.split()
    ids = lm_substitutes.word_ids(tokenizer, words)
    logps = {at: _next_word_log_probs(model, params, tokenizer, [start] + sum(ids[:at], []),
                                      ids[at][0], allowed)
             for at in attacks.NWS.substitutable(words)}
    fits = sorted(logps, key=lambda at: (-logps[at].max(), at))[:2]  # the best-fitting words
    assert [at for at, _, _ in subs] == sorted(fits)
    new = list(words)
    for at, word, options in subs:
      assert word == words[at]
      top = [tokenizer.decode([t]).strip() for t in np.argsort(-logps[at], kind="stable")[:3]]
      assert set(top) <= set(VOCABULARY)
      assert sorted(c for c, _ in options) == sorted(top)  # the vocabulary's likeliest
      brute = {}
      for candidate in top:
        row = ([start] + sum(ids[:at], []) + tokenizer(" " + candidate, add_special_tokens=False)[
            "input_ids"] + sum(ids[at + 1:], []))
        lp = _log_probs(model, params, row)
        brute[candidate] = sum(lp[t, row[t + 1]] for t in range(len(row) - 1))
      assert [c for c, _ in options] == sorted(brute, key=lambda c: -brute[c])
      np.testing.assert_allclose([s for _, s in options], [brute[c] for c, _ in options],
                                 rtol=1e-5, atol=1e-4)
      new[at] = options[0][0]
    assert record["rewrites"][text] == " ".join(new)


def test_vocabulary_words_must_be_single_tokens(tiny):
  _, _, tokenizer = tiny
  with pytest.raises(ValueError, match="one token with a leading space: \\['moviescript'\\]"):
    lm_substitutes.vocabulary_tokens(tokenizer, ["movie", "moviescript"])


def test_candidates_are_whole_content_words(tiny):
  _, _, tokenizer = tiny
  allowed = lm_substitutes.candidate_tokens(tokenizer)
  words = {tokenizer.decode([t]) for t in np.flatnonzero(allowed)}
  assert " movie" in words and " picture" in words
  assert not words & {" the", " was", " great", " dull", " .", "movie"}  # stopwords, labels
