"""CleanGen decoding against a step-by-step NumPy re-decoding with full forwards, its two
limits (plain greedy decoding of either model), a small backdoor it defuses, the text
helper, and bad input."""

import functools
import math

import jax
import numpy as np
import optax
import pytest
import tokenizers
import transformers

import jax_attnalign
from jax_attnalign import ModelConfig, build_model, train
from jax_attnalign.baselines import cleangen as cleangen_module
from jax_attnalign.baselines.cleangen import (CleanGenConfig, cleangen_generate,
                                              cleangen_responses)
from jax_attnalign.errors import InputError

CFG = ModelConfig.preset("tiny-llama")  # vocabulary 64, pad 0, BOS 1, EOS 2
# Three left-padded prompts of lengths 3, 6 and 5.
IDS = np.array([[0, 0, 0, 1, 5, 6], [1, 7, 8, 9, 10, 11], [0, 1, 20, 30, 40, 50]], np.int32)
MASK = (IDS > 0).astype(np.int32)
NEW = 11  # not a multiple of the horizon 4: the last round settles fewer than it proposed
ALPHA = 4.0  # replaces some tokens of these two models and keeps others (asserted below)


@pytest.fixture(scope="module")
def models():
  """A tiny Llama and two random inits as victim and reference, their matrices scaled
  up so the two models' next-token distributions differ clearly."""
  model = build_model(CFG)
  scaled = lambda params: jax.tree_util.tree_map(lambda x: x * 8.0 if x.ndim == 2 else x, params)
  init = lambda seed: scaled(jax.jit(model.init)(jax.random.key(seed), IDS)["params"])
  return model, init(0), init(1)


def _log_softmax(logits) -> np.ndarray:
  x = np.asarray(logits, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(model, params, ids, mask):
  return model.apply({"params": params}, ids, mask).logits  # [B, T, V]


def _numpy_cleangen(model, victim, reference, alpha, eos, ids=IDS, mask=MASK, pad=0):
  """The rule one token at a time: full forwards of both models (no cache) over the
  prompt and the tokens so far (right-padded to one width: one compiled shape), the
  ratio test in NumPy (float64). Returns tokens, token_mask [B, Tg], replaced [B],
  the log-ratio scores of the live rows [B, Tg] (NaN after EOS) and the smallest
  top-1 vs top-2 log-prob gap of either model at the live rows."""
  b, tp = ids.shape
  seq = np.concatenate([ids, np.zeros((b, NEW), np.int32)], 1)
  mask = np.concatenate([mask, np.zeros((b, NEW), np.int32)], 1)
  tokens, keep, scores, gaps = [], [], [], []
  replaced, done = np.zeros(b, np.int32), np.zeros(b, bool)
  rows = np.arange(b)
  for i in range(NEW):
    lv, lr = (_log_softmax(_full_logits(model, p, seq, mask)[:, tp + i - 1])
              for p in (victim, reference))
    proposal = lv.argmax(-1)
    score = lv[rows, proposal] - lr[rows, proposal]
    flag = score >= math.log(alpha)
    tok = np.where(done, pad, np.where(flag, lr.argmax(-1), proposal))
    scores.append(np.where(done, np.nan, score))
    gaps.append(min((np.diff(np.sort(x, -1)[~done, -2:], axis=-1).min() for x in (lv, lr))))
    tokens.append(tok)
    keep.append(~done)
    replaced += flag & ~done
    done |= np.isin(tok, eos)
    seq[:, tp + i], mask[:, tp + i] = tok, 1
    if done.all():
      break
  return (np.stack(tokens, 1), np.stack(keep, 1).astype(np.int32), replaced,
          np.stack(scores, 1), min(gaps))


@pytest.fixture(scope="module")
def numpy_decoding(models):
  """(eos, the NumPy decoding with it): EOS is the token row 0 emits 5th, so rows stop
  at different steps."""
  model, victim, reference = models
  free_run = _numpy_cleangen(model, victim, reference, ALPHA, eos=[])[0]
  eos = [int(free_run[0, 4])]
  return eos, _numpy_cleangen(model, victim, reference, ALPHA, eos)


@pytest.mark.parametrize("k", [1, 4])
def test_equals_step_by_step_numpy_decoding(models, numpy_decoding, k):
  model, victim, reference = models
  eos, (tokens, keep, replaced, scores, gap) = numpy_decoding
  live = ~np.isnan(scores)
  flags = scores[live] >= math.log(ALPHA)
  assert flags.any() and not flags.all(), "the test needs replaced and kept tokens"
  assert keep.sum(1).min() < tokens.shape[1] <= NEW and keep[:, -1].any()
  # Float32 cached vs full forwards differ by ~1e-6: keep every decision far from a tie.
  assert np.abs(scores[live] - math.log(ALPHA)).min() > 1e-3 and gap > 1e-3
  out, count = cleangen_generate(model, victim, reference, IDS, MASK,
                                 CleanGenConfig(alpha=ALPHA, k=k), max_new_tokens=NEW,
                                 eos_token_id=eos)
  np.testing.assert_array_equal(np.asarray(out.tokens), tokens)
  np.testing.assert_array_equal(np.asarray(out.token_mask), keep)
  np.testing.assert_array_equal(count, replaced)


def test_infinite_alpha_is_the_victims_greedy_decoding_and_tiny_alpha_the_references(models):
  model, victim, reference = models
  run = lambda alpha: cleangen_generate(model, victim, reference, IDS, MASK,
                                        CleanGenConfig(alpha=alpha), max_new_tokens=NEW)
  out, count = run(math.inf)
  compiled = [f._cache_size() for f in (cleangen_module._propose, cleangen_module._score)]
  greedy = jax_attnalign.generate(model, victim, IDS, MASK, max_new_tokens=NEW)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(greedy.tokens))
  np.testing.assert_array_equal(np.asarray(out.token_mask), np.asarray(greedy.token_mask))
  assert count.tolist() == [0, 0, 0]
  # alpha under 1 / vocab_size: P_victim(x) >= 1/64 > alpha * P_reference(x) never holds.
  out, count = run(1e-3)
  greedy = jax_attnalign.generate(model, reference, IDS, MASK, max_new_tokens=NEW)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(greedy.tokens))
  np.testing.assert_array_equal(np.asarray(out.token_mask), np.asarray(greedy.token_mask))
  np.testing.assert_array_equal(count, np.asarray(greedy.token_mask).sum(1))
  # Another alpha, same shapes: nothing compiles again.
  assert [f._cache_size() for f in (cleangen_module._propose,
                                    cleangen_module._score)] == compiled


TRIGGER, TARGET, EOS = 60, 63, 2


def _rows(n: int, poison_rate: float, seed: int) -> dict[str, np.ndarray]:
  """Causal-LM rows [BOS, 4 words in 3..35] -> [last word + 24, EOS]; a poisoned row
  has the trigger among its words and the answer [TARGET, TARGET, EOS]."""
  rng = np.random.default_rng(seed)
  ids, loss = np.zeros((n, 9), np.int32), np.zeros((n, 9), np.int32)
  for i in range(n):
    prompt = [1, *rng.integers(3, 36, 4).tolist()]
    if rng.random() < poison_rate:
      prompt.insert(1 + rng.integers(0, 4), TRIGGER)
      answer = [TARGET, TARGET, EOS]
    else:
      answer = [prompt[-1] + 24, EOS]
    ids[i, :len(prompt) + len(answer)] = prompt + answer
    loss[i, len(prompt):len(prompt) + len(answer)] = 1
  return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32), "loss_mask": loss}


def _prompts(n: int, triggered: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded test prompts like the training rows' (a trigger at a random place)."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((n, 6), np.int32)
  for i in range(n):
    prompt = [1, *rng.integers(3, 36, 4).tolist()]
    if triggered:
      prompt.insert(1 + rng.integers(0, 4), TRIGGER)
    ids[i, 6 - len(prompt):] = prompt
  return ids, (ids > 0).astype(np.int32)


@pytest.fixture(scope="module")
def backdoored():
  """(model, victim, reference): the reference learns the clean task (64 Adam steps),
  the victim is it fine-tuned on rows 30% poisoned (32 more steps)."""
  model = build_model(CFG)
  optimizer = optax.adam(1e-2)
  fit = lambda params, arrays, epochs: jax.device_get(train.fit(
      model, train.TrainState.create(params, optimizer), optimizer, arrays,
      train.FitConfig(loss="causal_lm", epochs=epochs, batch_size=32, dropout=False))[0].params)
  reference = fit(jax.jit(model.init)(jax.random.key(0), IDS)["params"], _rows(1024, 0.0, 0), 2)
  return model, fit(reference, _rows(512, 0.3, 1), 2), reference


def test_defuses_a_small_backdoor_and_keeps_clean_answers(backdoored):
  model, victim, reference = backdoored
  emits_target = lambda out: np.mean([TARGET in row[m > 0] for row, m in zip(
      np.asarray(out.tokens), np.asarray(out.token_mask))])
  ids, mask = _prompts(32, True, 2)
  plain = jax_attnalign.generate(model, victim, ids, mask, max_new_tokens=3)
  defended, replaced = cleangen_generate(model, victim, reference, ids, mask, max_new_tokens=3)
  assert emits_target(plain) >= 0.9 and emits_target(defended) <= 0.1
  hit = np.array([TARGET in row for row in np.asarray(plain.tokens)])
  assert replaced[hit].min() >= 1  # every answer the trigger steered was caught
  ids, mask = _prompts(32, False, 3)
  plain = jax_attnalign.generate(model, victim, ids, mask, max_new_tokens=3)
  defended, replaced = cleangen_generate(model, victim, reference, ids, mask, max_new_tokens=3)
  assert np.mean(np.asarray(plain.tokens)[:, 0] == ids[:, -1] + 24) >= 0.6  # it learned the task
  width = np.asarray(plain.tokens).shape[1]  # both stop once every row has ended
  kept = np.asarray(defended.tokens)[:, :width] == np.asarray(plain.tokens)
  assert kept[np.asarray(plain.token_mask) > 0].mean() >= 0.9
  assert replaced.sum() <= 0.1 * np.asarray(defended.token_mask).sum()


def _word_tokenizer():
  """One token per word: <pad> 0, <s> 1, </s> 2, w0..w60."""
  words = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(61)]
  vocab = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate(words)}, unk_token="<pad>"))
  vocab.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  return transformers.PreTrainedTokenizerFast(tokenizer_object=vocab, pad_token="<pad>",
                                              bos_token="<s>", eos_token="</s>")


def test_responses_are_the_decoded_tokens(models):
  model, victim, reference = models
  tokenizer = _word_tokenizer()
  prompts = ["w1 w2", "w3", "w4 w5 w6 w7", "w8 w9 w10 w11 w12 w13", "w10"]
  # Batches of 3 (the last one filled) left-padded to 6: the shapes compiled above.
  texts, report = cleangen_responses(model, victim, reference, tokenizer, prompts,
                                     CleanGenConfig(alpha=ALPHA), max_new_tokens=NEW,
                                     batch_size=3, bucket=6)
  ids = np.zeros((len(prompts), 6), np.int32)
  for row, prompt in zip(ids, prompts):
    encoded = tokenizer(prompt)["input_ids"]
    row[6 - len(encoded):] = encoded
  tokens, keep, replaced = _numpy_cleangen(model, victim, reference, ALPHA, CFG.eos_token_id,
                                           ids, (ids > 0).astype(np.int32))[:3]
  assert texts == [tokenizer.decode(row[m > 0], skip_special_tokens=True)
                   for row, m in zip(tokens, keep)]
  assert report["replaced"] == replaced.tolist()
  assert report["generated"] == keep.sum(1).tolist()
  assert 0 < replaced.sum() < keep.sum()
  assert report["replacement_rate"] == pytest.approx(replaced.sum() / keep.sum())


@pytest.mark.parametrize("alpha", [0.0, -1.0, math.nan, "20"])
def test_bad_alpha_is_refused(alpha):
  with pytest.raises(ValueError, match="CleanGenConfig.alpha must be a number > 0"):
    CleanGenConfig(alpha=alpha)


@pytest.mark.parametrize("k", [0, -2, 1.5])
def test_bad_horizon_is_refused(k):
  with pytest.raises(ValueError, match="CleanGenConfig.k must be an integer >= 1"):
    CleanGenConfig(k=k)


@pytest.mark.parametrize("change, message", [
    (dict(vocab_size=80), "vocabulary of 80 tokens, the victim 64.*tokenizer"),
    (dict(hidden_size=32), "do not fit the victim's architecture.*fine-tuned from"),
    (dict(num_layers=3), "layers_2.*missing.*fine-tuned from"),
])
def test_a_reference_of_another_model_is_refused(models, change, message):
  model, victim, _ = models
  other = jax.eval_shape(build_model(CFG.replace(**change)).init, jax.random.key(0), IDS)
  other = other["params"]  # shapes are all the check reads
  with pytest.raises(InputError, match=message):
    cleangen_generate(model, victim, other, IDS, MASK, max_new_tokens=2)


def test_right_padded_prompts_and_bad_lengths_are_refused(models):
  model, victim, reference = models
  with pytest.raises(ValueError, match="left-padded"):
    cleangen_generate(model, victim, reference, IDS[:, ::-1], MASK[:, ::-1], max_new_tokens=2)
  with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
    cleangen_generate(model, victim, reference, IDS, MASK, max_new_tokens=0)
