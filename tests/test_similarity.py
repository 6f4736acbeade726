"""Head cosine similarity and pair statistics against a NumPy brute force."""

import jax
import numpy as np

from jax_attnalign.analysis import head_cosine, pair_statistics


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
