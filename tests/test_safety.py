"""Safety scores (eq. 5) and head classes."""

import numpy as np
import pytest

from jax_attnalign.analysis.safety import (EmptySafeSetError, HeadClass, class_counts,
                                           classify_heads, require_safe_heads,
                                           safety_scores)


def test_scores_match_eq5_raw_and_minmax():
  rng = np.random.RandomState(0)
  sim = rng.uniform(0.8, 1.0, (3, 5))
  imp = rng.uniform(0, 1, (3, 5))
  imp /= imp.max()
  np.testing.assert_allclose(safety_scores(sim, imp, 0.7, "raw"),
                             1 - (0.7 * sim + 0.3 * imp), atol=1e-6)
  scaled = (sim - sim.min()) / (sim.max() - sim.min())
  np.testing.assert_allclose(safety_scores(sim, imp, 0.7), 1 - (0.7 * scaled + 0.3 * imp),
                             atol=1e-6)


def test_classes_and_empty_safe_set():
  scores = np.array([[0.1, 0.5, 0.8], [0.29, 0.71, 0.3]])
  labels = classify_heads(scores, tau=0.3)
  expected = [[HeadClass.SUSPICIOUS, HeadClass.INTERMEDIATE, HeadClass.SAFE],
              [HeadClass.SUSPICIOUS, HeadClass.SAFE, HeadClass.INTERMEDIATE]]
  np.testing.assert_array_equal(labels, expected)
  assert class_counts(labels) == {"suspicious": 2, "intermediate": 2, "safe": 2}
  np.testing.assert_array_equal(require_safe_heads(labels), labels == HeadClass.SAFE)
  # The paper's raw cosine in a view where every head has a near-twin: nothing is safe.
  near_twins = safety_scores(np.full((2, 4), 0.995), np.full((2, 4), 0.2), 0.7, "raw")
  with pytest.raises(EmptySafeSetError, match="No head is safe"):
    require_safe_heads(classify_heads(near_twins, 0.3))


@pytest.mark.parametrize("alpha,tau", [(-0.1, 0.3), (1.2, 0.3), (0.7, -0.01), (0.7, 0.6)])
def test_out_of_range_parameters_are_clear_errors(alpha, tau):
  with pytest.raises(ValueError, match="alpha|tau"):
    classify_heads(safety_scores(np.ones((1, 2)), np.ones((1, 2)), alpha), tau)
