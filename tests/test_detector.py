"""Online detector: scores, calibration at a false-positive rate, JSON round trip."""

import jax
import numpy as np
import pytest

from jax_attnalign.analysis import head_similarity
from jax_attnalign.defense.detector import Detector, calibrate_detector, input_scores
from jax_attnalign.models import ModelConfig, attention_maps, build_model

CFG = ModelConfig(model_type="bert", vocab_size=41, hidden_size=20, num_layers=2,
                  num_heads=4, intermediate_size=23)


def test_scores_match_materialised_brute_force():
  model = build_model(CFG, "classification")
  rng = np.random.RandomState(0)
  ids = rng.randint(3, 41, (5, 8))
  mask = np.ones_like(ids)
  mask[1, 5:] = 0
  params = model.init(jax.random.PRNGKey(0), ids)["params"]
  batch = {"input_ids": ids, "attention_mask": mask}
  scores = input_scores(model, params, batch, "full", "mean")
  _, state = model.apply({"params": params}, ids, mask, capture_attention=True,
                         mutable=["intermediates"])
  cos = np.asarray(head_similarity(attention_maps(state), "full", attention_mask=mask))
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
  model = build_model(CFG, "classification")
  rng = np.random.RandomState(1)
  ids = rng.randint(3, 41, (7, 8))
  mask = np.ones_like(ids)
  mask[2, 4:] = 0
  params = model.init(jax.random.PRNGKey(1), ids)["params"]
  arrays = {"input_ids": ids, "attention_mask": mask}
  stats = ("mean", "percentile", "frac_above")
  together = scores_of(model, params, arrays, "full", stats, batch_size=3, per_layer=True)
  _, state = model.apply({"params": params}, ids, mask, capture_attention=True,
                         mutable=["intermediates"])
  cos = np.asarray(head_similarity(attention_maps(state), "full", attention_mask=mask))
  pairs = np.stack([[[cos[b, l, i, j] for i in range(4) for j in range(i + 1, 4)]
                     for l in range(2)] for b in range(7)])  # [B, L, 6]
  expected = {"mean": pairs.mean(-1), "percentile": np.percentile(pairs, 99, axis=-1),
              "frac_above": (pairs > 0.99).mean(-1)}
  for name in stats:
    assert together[name].shape == (7, 2)
    np.testing.assert_allclose(together[name], expected[name], atol=1e-5)
    alone = scores_of(model, params, arrays, "full", name, batch_size=3)
    np.testing.assert_allclose(alone, together[name].mean(-1), atol=1e-6)
