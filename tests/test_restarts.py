"""Restarts of the sanitisation and their label-free choice, against a brute-force rule."""

import dataclasses

import chex
import jax
import numpy as np
import pytest

from jax_attnalign.defense import restarts, sanitize_restarts
from jax_attnalign.defense.sanitize import SanitizeConfig, sanitize
from jax_attnalign.models import build_model
from test_sanitize import CFG, FAST, _data

CONFIG = SanitizeConfig(**FAST, stop="fixed", max_rounds=1, restarts=2)


@pytest.fixture(scope="module")
def case():
  model = build_model(CFG, "classification")
  suspects, clean, holdout = _data(12, 0), _data(24, 1), _data(16, 2)
  watch = {k: v for k, v in _data(10, 3).items() if k != "labels"}
  params = jax.device_get(model.init(jax.random.PRNGKey(0), clean["input_ids"][:2])["params"])
  runs = [sanitize(model, params, suspects, clean, dataclasses.replace(CONFIG, seed=k))[0]
          for k in range(CONFIG.restarts)]
  return model, params, suspects, clean, watch, holdout, runs


def _predict(model, params, arrays):
  return np.asarray(model.apply({"params": params}, arrays["input_ids"],
                                arrays["attention_mask"]).logits).argmax(-1)


def _expected(model, params, runs, watch, holdout, tolerance):
  """The rule by hand: (chosen index, shares, holdout accuracies, accuracy before)."""
  target = np.bincount(_predict(model, params, watch)).argmax()
  shares = [np.mean(_predict(model, p, watch) == target) for p in runs]
  accuracy = [np.mean(_predict(model, p, holdout) == holdout["labels"]) for p in runs]
  before = np.mean(_predict(model, params, holdout) == holdout["labels"])
  eligible = [k for k in range(len(runs)) if accuracy[k] >= before - tolerance - 1e-6]
  chosen = (min(eligible, key=lambda k: (shares[k], k)) if eligible
            else max(range(len(runs)), key=lambda k: (accuracy[k], -k)))
  return chosen, shares, accuracy, before


@pytest.mark.parametrize("tolerance", [0.0, 1.0, -1.0])  # some / every / no run eligible
def test_choice_follows_the_rule_computed_by_hand(case, tolerance, monkeypatch):
  """Runs made to differ (seeded noise on the weights) so that the choice matters."""
  model, params, suspects, clean, watch, holdout, _ = case

  def noisy_run(model, params, suspects, clean, config, **kwargs):
    del model, suspects, clean, kwargs
    keys = jax.random.split(jax.random.PRNGKey(config.seed),
                            len(jax.tree_util.tree_leaves(params)))
    leaves = [x + 0.5 * jax.random.normal(k, x.shape) for x, k in
              zip(jax.tree_util.tree_leaves(params), keys)]
    return (jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves),
            {"rounds": [{}], "stopped": "max_rounds"})

  monkeypatch.setattr(restarts, "sanitize", noisy_run)
  config = dataclasses.replace(CONFIG, restarts=4, restart_tolerance=tolerance)
  runs = [noisy_run(model, params, None, None, dataclasses.replace(config, seed=k))[0]
          for k in range(4)]
  chosen, shares, accuracy, before = _expected(model, params, runs, watch, holdout, tolerance)
  assert len(set(shares)) > 1 and len(set(accuracy)) > 1, (shares, accuracy)
  out, report = sanitize_restarts(model, params, suspects, clean, watch, holdout, config)
  np.testing.assert_allclose([r["watched_target_share"] for r in report["restarts"]], shares)
  np.testing.assert_allclose([r["holdout_accuracy"] for r in report["restarts"]], accuracy,
                             atol=1e-6)
  assert [r["seed"] for r in report["restarts"]] == [0, 1, 2, 3]
  np.testing.assert_allclose(report["holdout_accuracy_before"], before, atol=1e-6)
  assert report["chosen"] == chosen
  chex.assert_trees_all_close(out, runs[chosen], atol=1e-6)


def test_real_runs_are_kept_and_read_back_from_the_workdir(case, tmp_path):
  model, params, suspects, clean, watch, holdout, runs = case
  out, report = sanitize_restarts(model, params, suspects, clean, watch, holdout, CONFIG,
                                  workdir=tmp_path)
  chosen, shares, _, _ = _expected(model, params, runs, watch, holdout,
                                   CONFIG.restart_tolerance)
  assert report["chosen"] == chosen
  np.testing.assert_allclose([r["watched_target_share"] for r in report["restarts"]], shares)
  chex.assert_trees_all_close(out, runs[chosen], atol=1e-6)  # sanitize's own run, that seed
  assert (tmp_path / "rounds").is_dir() and (tmp_path / "restart1" / "rounds").is_dir()
  again, again_report = sanitize_restarts(model, params, suspects, clean, watch, holdout,
                                          CONFIG, workdir=tmp_path)  # read back, not rerun
  assert again_report["restarts"] == report["restarts"]
  chex.assert_trees_all_close(again, out, atol=1e-6)


def test_bad_input_is_refused_with_the_fix(case):
  model, params, suspects, clean, watch, holdout, _ = case
  with pytest.raises(ValueError, match="loss='classification'"):
    sanitize_restarts(model, params, suspects, clean, watch, holdout,
                      dataclasses.replace(CONFIG, loss="causal_lm"))
  empty = {k: v[:0] for k, v in watch.items()}
  with pytest.raises(ValueError, match="watched inputs and holdout rows"):
    sanitize_restarts(model, params, suspects, clean, empty, holdout, CONFIG)
  with pytest.raises(ValueError, match="restarts must be >= 1"):
    dataclasses.replace(CONFIG, restarts=0)
