"""Online detector: scores, calibration at a false-positive rate, JSON round trip."""

import jax
import numpy as np
import pytest

from jax_attnalign.analysis import head_similarity
from jax_attnalign.defense.detector import Detector, calibrate_detector, input_scores
from jax_attnalign.models import PATTERNS, ModelConfig, attention_maps, build_model, run_with_hooks

CFG = ModelConfig(model_type="bert", vocab_size=41, hidden_size=20, num_layers=2,
                  num_heads=4, intermediate_size=23)


def _model_inputs_and_cosines(seed: int, rows: int, padded_row: int, pad_from: int):
  """A tiny classifier, random inputs (one row padded) and the materialised
  per-input head cosines of the 'full' view, [B, L, N, N], as the brute-force side."""
  model = build_model(CFG, "classification")
  ids = np.random.RandomState(seed).randint(3, 41, (rows, 8))
  mask = np.ones_like(ids)
  mask[padded_row, pad_from:] = 0
  params = model.init(jax.random.PRNGKey(seed), ids)["params"]
  batch = {"input_ids": ids, "attention_mask": mask}
  _, captured = run_with_hooks(model, params, batch, capture=PATTERNS)
  cos = np.asarray(head_similarity(attention_maps(captured), "full", attention_mask=mask))
  return model, params, batch, cos


def test_scores_match_materialised_brute_force():
  model, params, batch, cos = _model_inputs_and_cosines(0, rows=5, padded_row=1, pad_from=5)
  scores = input_scores(model, params, batch, "full", "mean")
  expected = [np.mean([np.mean([cos[b, l, i, j] for i in range(4) for j in range(i + 1, 4)])
                       for l in range(2)]) for b in range(5)]
  np.testing.assert_allclose(scores, expected, atol=1e-6)
  with pytest.raises(ValueError, match="statistic"):
    input_scores(model, params, batch, "full", "median")


def test_calibration_hits_the_false_positive_rate_and_round_trips(tmp_path):
  clean = np.random.RandomState(0).normal(size=1000)
  detector = calibrate_detector(clean, view="cls_row_nospecial", fpr=0.05)
  assert 0.045 <= detector.flag(clean).mean() <= 0.05
  fresh = np.random.RandomState(1).normal(size=20000)
  assert abs(detector.flag(fresh).mean() - 0.05) < 0.01
  path = tmp_path / "detector.json"
  detector.save(path)
  assert Detector.load(path) == detector
  path.write_text('{"view": "cls_row"}')
  with pytest.raises(ValueError, match="Recalibrate"):
    Detector.load(path)
  with pytest.raises(ValueError, match="fpr"):
    calibrate_detector(clean, view="full", fpr=1.5)


def test_all_statistics_in_one_pass_match_brute_force_and_single_calls():
  from jax_attnalign.defense.sanitize import scores_of  # per_input over a pytree
  model, params, arrays, cos = _model_inputs_and_cosines(1, rows=7, padded_row=2, pad_from=4)
  stats = ("mean", "percentile", "frac_above")
  together = scores_of(model, params, arrays, "full", stats, batch_size=3, per_layer=True)
  pairs = np.stack([[[cos[b, l, i, j] for i in range(4) for j in range(i + 1, 4)]
                     for l in range(2)] for b in range(7)])  # [B, L, 6]
  expected = {"mean": pairs.mean(-1), "percentile": np.percentile(pairs, 99, axis=-1),
              "frac_above": (pairs > 0.99).mean(-1)}
  for name in stats:
    assert together[name].shape == (7, 2)
    np.testing.assert_allclose(together[name], expected[name], atol=1e-5)
    alone = scores_of(model, params, arrays, "full", name, batch_size=3)
    np.testing.assert_allclose(alone, together[name].mean(-1), atol=1e-6)
