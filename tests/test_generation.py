"""Cached decoding against the full forward and against transformers' generate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_attnalign
import tiny_hf
from jax_attnalign.models import PATTERNS, init_cache, run_with_hooks
from jax_attnalign.models.generation import sample_logits

NEW = 12  # with 13 prompt slots the sequence passes Mistral's window of 5 twice


@pytest.fixture(scope="module", params=tiny_hf.DECODER_CASES)
def case(request, tmp_path_factory):
  hf, model, params = tiny_hf.make_and_load(request.param,
                                           tmp_path_factory.mktemp(request.param))
  ids, mask = tiny_hf.batch(request.param)
  return hf, model, params, ids, mask


def test_cached_decoding_equals_full_forward(case):
  _, model, params, ids, mask = case
  rng = np.random.RandomState(1)
  cont = rng.randint(3, tiny_hf.VOCAB, (ids.shape[0], NEW))
  full_ids = np.concatenate([ids, cont], axis=1)
  full_mask = np.concatenate([mask, np.ones_like(cont)], axis=1)
  full = model.apply({"params": params}, full_ids, full_mask).logits
  b, tp = ids.shape
  cache = init_cache(model.config, b, tp + NEW)
  step = jax.jit(lambda c, tok, pos, idx: model.apply(
      {"params": params}, tok, position_ids=pos, cache=c, cache_index=idx,
      cache_mask=full_mask))
  positions = tiny_hf.left_padded_positions(full_mask)
  out = step(cache, ids, positions[:, :tp], 0)
  logits, cache = [out.logits], out.cache
  for i in range(NEW):
    out = step(cache, cont[:, i:i + 1], positions[:, tp + i:tp + i + 1], tp + i)
    logits.append(out.logits)
    cache = out.cache
  cached = np.concatenate([np.asarray(x) for x in logits], axis=1)
  valid = full_mask.astype(bool)
  np.testing.assert_allclose(cached[valid], np.asarray(full)[valid], atol=1e-5)


def test_greedy_generate_equals_transformers(case):
  hf, model, params, ids, mask = case
  hf.generation_config.eos_token_id = None  # generate all NEW tokens, as below
  with torch.no_grad():
    ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                      max_new_tokens=NEW, do_sample=False,
                      pad_token_id=0)[:, ids.shape[1]:].numpy()
  out = jax_attnalign.generate(model, params, ids, mask, max_new_tokens=NEW,
                               eos_token_id=[])
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  assert np.asarray(out.token_mask).all()


def test_generation_to_prompt_attention(case):
  _, model, params, ids, mask = case
  out = jax_attnalign.generate(model, params, ids, mask, max_new_tokens=NEW,
                               eos_token_id=[], return_attention=True)
  full_ids = np.concatenate([ids, np.asarray(out.tokens)], axis=1)
  full_mask = np.concatenate([mask, np.ones_like(out.tokens)], axis=1)
  _, captured = run_with_hooks(model, params, {"input_ids": full_ids,
                                               "attention_mask": full_mask}, capture=PATTERNS)
  tp = ids.shape[1]
  expected = jax_attnalign.attention_maps(captured)[..., tp:, :tp]  # [L, B, N, Tg, Tp]
  assert out.attention.shape == expected.shape
  np.testing.assert_allclose(np.asarray(out.attention), np.asarray(expected), atol=1e-6)


def test_stops_at_eos_and_pads_after(case):
  _, model, params, ids, mask = case
  # Sampled (same key in every call), since tiny random models often repeat one token.
  kw = dict(max_new_tokens=NEW, do_sample=True, rng=jax.random.key(0))
  free_run = np.asarray(jax_attnalign.generate(model, params, ids, mask, eos_token_id=[],
                                             **kw).tokens)
  # EOS := a token some row first emits at a step j > 0, so that row stops there.
  eos = next(int(row[j]) for row in free_run for j in range(1, NEW) if row[j] not in row[:j])
  out = jax_attnalign.generate(model, params, ids, mask, eos_token_id=eos, pad_token_id=0,
                               **kw)
  tokens, token_mask = np.asarray(out.tokens), np.asarray(out.token_mask)
  # Brute force: each row keeps its tokens up to its first EOS, then pads.
  hits = [np.flatnonzero(row == eos) for row in free_run]
  ends = [h[0] + 1 if len(h) else NEW for h in hits]
  assert tokens.shape[1] == max(ends)  # the loop stops once every row is done
  for row, end in enumerate(ends):
    np.testing.assert_array_equal(tokens[row, :end], free_run[row, :end])
    assert (tokens[row, end:] == 0).all()
    np.testing.assert_array_equal(token_mask[row], np.arange(tokens.shape[1]) < end)
  # Every row's first token as EOS: all rows finish at once.
  out = jax_attnalign.generate(model, params, ids, mask,
                               eos_token_id=[int(t) for t in free_run[:, 0]], **kw)
  assert out.tokens.shape == (ids.shape[0], 1)


def test_sampling_is_seeded_and_respects_filters(case):
  _, model, params, ids, mask = case
  kw = dict(max_new_tokens=4, do_sample=True, temperature=0.7, top_k=5, top_p=0.9,
            eos_token_id=[])
  a = jax_attnalign.generate(model, params, ids, mask, rng=jax.random.key(3), **kw)
  b = jax_attnalign.generate(model, params, ids, mask, rng=jax.random.key(3), **kw)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  with pytest.raises(ValueError, match="PRNG key"):
    jax_attnalign.generate(model, params, ids, mask, max_new_tokens=2, do_sample=True)
  right_padded = np.roll(mask, -2, axis=1)
  with pytest.raises(ValueError, match="left-padded"):
    jax_attnalign.generate(model, params, ids, right_padded, max_new_tokens=2)


def _allowed(logits, top_k, top_p):
  """NumPy brute force: {token: probability} of top-k then top-p sampling, per row."""
  allowed = []
  for row in logits:
    order = np.argsort(-row, kind="stable")
    keep = set(order[:top_k]) if top_k else set(order)
    kept = np.array([i for i in order if i in keep])
    p = np.exp(row[kept] - row[kept].max())
    p /= p.sum()
    before = np.cumsum(p) - p
    keep = before < top_p
    allowed.append(dict(zip(kept[keep].tolist(), p[keep] / p[keep].sum())))
  return allowed


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (4, 1.0), (0, 0.6), (6, 0.8)])
def test_sample_logits_support_matches_brute_force(top_k, top_p):
  logits = jnp.asarray(np.random.RandomState(0).normal(size=(3, 17)) * 2, jnp.float32)
  draw = jax.jit(jax.vmap(lambda k: sample_logits(logits, k, top_k=top_k, top_p=top_p)))
  samples = np.asarray(draw(jax.random.split(jax.random.key(0), 3000)))  # [3000, 3]
  for row, allowed in enumerate(_allowed(np.asarray(logits), top_k, top_p)):
    counts = np.bincount(samples[:, row], minlength=17) / len(samples)
    assert set(np.flatnonzero(counts)) <= set(allowed)
    for token, prob in allowed.items():  # 3000 draws: 4 sigma on each frequency
      assert abs(counts[token] - prob) < 4 * np.sqrt(prob * (1 - prob) / 3000) + 1e-9
