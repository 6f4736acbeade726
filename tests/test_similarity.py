"""Head cosine similarity and pair statistics against a NumPy brute force."""

import chex
import jax
import numpy as np
import pytest

from jax_attnalign.analysis import head_cosine, pair_statistics
from jax_attnalign.analysis.similarity import head_similarity, max_other_similarity
from jax_attnalign.analysis.views import View, extract_view


def test_head_cosine_and_statistics_match_brute_force():
  rng = np.random.RandomState(0)
  maps = rng.rand(3, 5, 7, 11).astype(np.float32)  # [B, L, N, F]
  valid = rng.rand(3, 1, 11) > 0.3  # padding differs per input, shared by layers
  cos = np.asarray(jax.jit(head_cosine)(maps, valid))
  frac_ref = np.zeros((3, 5))
  pct_ref = np.zeros((3, 5))
  for b in range(3):
    for l in range(5):
      vecs = [maps[b, l, n][valid[b, 0]] for n in range(7)]
      ref = np.array([[u @ v / np.linalg.norm(u) / np.linalg.norm(v) for v in vecs]
                      for u in vecs])
      np.testing.assert_allclose(cos[b, l], ref, atol=1e-6)
      pairs = [ref[i, j] for i in range(7) for j in range(i + 1, 7)]
      frac_ref[b, l] = np.mean(np.array(pairs) > 0.9)
      pct_ref[b, l] = np.percentile(pairs, 99)
  stats = pair_statistics(cos, threshold=0.9)
  np.testing.assert_allclose(stats["frac_above"], frac_ref, atol=1e-6)
  np.testing.assert_allclose(stats["percentile"], pct_ref, atol=1e-6)
  # Symmetric, unit diagonal, invariant to scaling a head's map.
  np.testing.assert_allclose(cos, np.swapaxes(cos, -1, -2), atol=1e-6)
  np.testing.assert_allclose(np.diagonal(cos, axis1=-2, axis2=-1), 1.0, atol=1e-6)
  scaled = maps.copy()
  scaled[:, :, 2] *= 7.5
  np.testing.assert_allclose(head_cosine(scaled, valid), cos, atol=1e-6)


L, B, N, T = 3, 4, 5, 7


def _encoder_batch(seed):
  rng = np.random.RandomState(seed)
  lengths = np.array([7, 5, 3, 6])  # right padding
  mask = (np.arange(T) < lengths[:, None]).astype(np.int32)
  special = np.zeros((B, T), np.int32)
  special[:, 0] = special[np.arange(B), lengths - 1] = 1  # [CLS], [SEP]
  maps = rng.rand(L, B, N, T, T) * mask[None, :, None, None, :]
  return (maps / maps.sum(-1, keepdims=True)).astype(np.float32), mask, special


def _brute_cosine(vectors):
  return np.array([[u @ v / np.linalg.norm(u) / np.linalg.norm(v) for v in vectors]
                   for u in vectors])


@pytest.mark.parametrize("scope", ["layer", "model"])
@pytest.mark.parametrize("view", ["full", "cls_row_nospecial", View(rows="all", layers=2)])
def test_head_similarity_matches_brute_force(view, scope):
  maps, mask, special = _encoder_batch(0)
  blocks, valid = map(np.asarray, extract_view(maps, view, attention_mask=mask,
                                               special_mask=special))
  fn = jax.jit(head_similarity, static_argnames=("view", "is_decoder", "scope"))
  cos = np.asarray(fn(maps, view, attention_mask=mask, special_mask=special, scope=scope))
  layers = blocks.shape[0]
  for b in range(B):  # loops over inputs, layers and heads
    per_head = [[blocks[l, b, n][valid[b]] for n in range(N)] for l in range(layers)]
    if scope == "layer":
      assert cos.shape == (B, layers, N, N)
      for l in range(layers):
        np.testing.assert_allclose(cos[b, l], _brute_cosine(per_head[l]), atol=1e-6)
    else:
      assert cos.shape == (B, layers * N, layers * N)
      flat = [v for heads in per_head for v in heads]
      np.testing.assert_allclose(cos[b], _brute_cosine(flat), atol=1e-6)
  np.testing.assert_allclose(cos, np.swapaxes(cos, -1, -2), atol=1e-6)
  np.testing.assert_allclose(np.diagonal(cos, axis1=-2, axis2=-1), 1.0, atol=1e-6)
  scaled = maps.copy()
  scaled[:, :, 3] *= 7.5  # one head's maps scaled: its cosines do not move
  np.testing.assert_allclose(
      fn(scaled, view, attention_mask=mask, special_mask=special, scope=scope), cos,
      atol=1e-6)


def test_max_other_similarity_and_pooled_statistics_match_brute_force():
  maps, mask, special = _encoder_batch(1)
  cos = np.asarray(head_similarity(maps, "cls_row_nospecial", attention_mask=mask,
                                   special_mask=special))  # [B, L, N, N]
  best = np.asarray(max_other_similarity(cos))
  model_cos = np.asarray(head_similarity(maps, "cls_row_nospecial", attention_mask=mask,
                                         special_mask=special, scope="model"))
  best_model = np.asarray(max_other_similarity(model_cos)).reshape(B, L, N)
  for b in range(B):
    for l in range(L):
      for h in range(N):
        assert best[b, l, h] == max(cos[b, l, h, j] for j in range(N) if j != h)
        others = [model_cos[b, l * N + h, k] for k in range(L * N) if k != l * N + h]
        assert best_model[b, l, h] == max(others)
  assert np.all(best_model >= best - 1e-7)  # the model-wide max ranges over more heads
  pooled = pair_statistics(cos, threshold=0.8, percentile=90.0, pool_axis=0)
  for l in range(L):
    pairs = np.array([cos[b, l, i, j] for b in range(B) for i in range(N)
                      for j in range(i + 1, N)])
    np.testing.assert_allclose(pooled["frac_above"][l], np.mean(pairs > 0.8), atol=1e-6)
    np.testing.assert_allclose(pooled["percentile"][l], np.percentile(pairs, 90.0),
                               atol=1e-6)


def test_no_retracing_over_batches():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def stats(maps, mask, special):
    cos = head_similarity(maps, "cls_row_last_layer", attention_mask=mask,
                          special_mask=special)
    return max_other_similarity(cos), pair_statistics(cos, pool_axis=0)

  for seed in range(3):
    best, pooled = stats(*_encoder_batch(seed))
    chex.assert_shape(best, (B, 1, N))
    chex.assert_shape(pooled["percentile"], (1,))
