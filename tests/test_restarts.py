"""Restarts of the sanitisation and their label-free choice, against a brute-force rule."""

import dataclasses
import shutil

import chex
import jax
import numpy as np
import pytest

from jax_attnalign.defense import RestartConfig, restarts, sanitize_restarts
from jax_attnalign.defense.sanitize import sanitize
from jax_attnalign.models import build_model
from test_sanitize import CFG, _data, rounds

CONFIG = rounds(1)
RESTARTS = RestartConfig(runs=2)


@pytest.fixture(scope="module")
def case():
  model = build_model(CFG, "classification")
  suspects, clean, holdout = _data(12, 0), _data(24, 1), _data(16, 2)
  watch = {k: v for k, v in _data(10, 3).items() if k != "labels"}
  params = jax.device_get(model.init(jax.random.PRNGKey(0), clean["input_ids"][:2])["params"])
  runs = [sanitize(model, params, suspects, clean, dataclasses.replace(CONFIG, seed=k))[0]
          for k in range(RESTARTS.runs)]
  return model, params, suspects, clean, watch, holdout, runs


def _predict(model, params, arrays):
  return np.asarray(model.apply({"params": params}, arrays["input_ids"],
                                arrays["attention_mask"]).logits).argmax(-1)


def _judge(model, params, candidate, watch, holdout, target, floor):
  share = np.mean(_predict(model, candidate, watch) == target)
  accuracy = np.mean(_predict(model, candidate, holdout) == holdout["labels"])
  return ((0, share) if accuracy >= floor - 1e-6 else (1, -accuracy)), share, accuracy


def _mean(trees):
  return jax.tree_util.tree_map(lambda *xs: np.mean(np.stack(xs).astype(np.float64), 0), *trees)


def _expected(model, params, runs, watch, holdout, tolerance, soup=True):
  """The rule by hand, NumPy averages: (chosen index, soup members, shares,
  holdout accuracies, accuracy before)."""
  target = np.bincount(_predict(model, params, watch)).argmax()
  before = np.mean(_predict(model, params, holdout) == holdout["labels"])
  judged = [_judge(model, params, p, watch, holdout, target, before - tolerance) for p in runs]
  order = sorted(range(len(runs)), key=lambda k: (judged[k][0], k))
  members, best = [order[0]], judged[order[0]][0]
  for k in order[1:] if soup else ():
    key = _judge(model, params, _mean([runs[j] for j in members + [k]]), watch, holdout,
                 target, before - tolerance)[0]
    if key < best:
      members, best = members + [k], key
  return (order[0], sorted(members), [j[1] for j in judged], [j[2] for j in judged], before)


@pytest.mark.parametrize("tolerance", [0.0, 1.0, -1.0])  # some / every / no run eligible
@pytest.mark.parametrize("soup", [True, False])
def test_choice_follows_the_rule_computed_by_hand(case, tolerance, soup, monkeypatch):
  """Runs made to differ (seeded noise on the weights) so that the choice matters."""
  model, params, suspects, clean, watch, holdout, _ = case

  def noisy_run(model, params, suspects, clean, config, **kwargs):
    del model, suspects, clean, kwargs
    keys = jax.random.split(jax.random.PRNGKey(config.seed),
                            len(jax.tree_util.tree_leaves(params)))
    leaves = [x + jax.random.normal(k, x.shape) for x, k in
              zip(jax.tree_util.tree_leaves(params), keys)]
    return (jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves),
            {"rounds": [{}], "stopped": "max_rounds"})

  monkeypatch.setattr(restarts, "sanitize", noisy_run)
  config = RestartConfig(runs=4, tolerance=tolerance, soup=soup)
  runs = [noisy_run(model, params, None, None, dataclasses.replace(CONFIG, seed=k))[0]
          for k in range(4)]
  chosen, members, shares, accuracy, before = _expected(model, params, runs, watch, holdout,
                                                        tolerance, soup)
  assert len(set(shares)) > 1 and len(set(accuracy)) > 1, (shares, accuracy)
  out, report = sanitize_restarts(model, params, suspects, clean, watch, holdout, CONFIG,
                                  restarts=config)
  np.testing.assert_allclose([r["watched_target_share"] for r in report["restarts"]], shares)
  np.testing.assert_allclose([r["holdout_accuracy"] for r in report["restarts"]], accuracy,
                             atol=1e-6)
  assert [r["seed"] for r in report["restarts"]] == [0, 1, 2, 3]
  np.testing.assert_allclose(report["holdout_accuracy_before"], before, atol=1e-6)
  assert (report["chosen"], report["soup"]) == (chosen, members)
  assert len(report["soup_trials"]) == (3 if soup else 0)
  assert [t["kept"] for t in report["soup_trials"]].count(True) == len(members) - 1
  if soup and tolerance != 0.0:  # these seeded runs take the averaging branch
    assert len(members) > 1 and not all(t["kept"] for t in report["soup_trials"]), members
  chex.assert_trees_all_close(out, _mean([runs[j] for j in members]), atol=1e-5)


def test_real_runs_are_kept_and_read_back_from_the_workdir(case, tmp_path):
  model, params, suspects, clean, watch, holdout, runs = case
  out, report = sanitize_restarts(model, params, suspects, clean, watch, holdout, CONFIG,
                                  restarts=RESTARTS, workdir=tmp_path)
  chosen, members, shares, _, _ = _expected(model, params, runs, watch, holdout,
                                            RESTARTS.tolerance)
  assert (report["chosen"], report["soup"]) == (chosen, members)
  np.testing.assert_allclose([r["watched_target_share"] for r in report["restarts"]], shares)
  # sanitize's own runs, those seeds, or their average
  chex.assert_trees_all_close(out, _mean([runs[j] for j in members]), atol=1e-5)
  assert (tmp_path / "rounds").is_dir() and (tmp_path / "restart1" / "rounds").is_dir()
  again, again_report = sanitize_restarts(model, params, suspects, clean, watch, holdout,
                                          CONFIG, restarts=RESTARTS,
                                          workdir=tmp_path)  # read back, not rerun
  assert again_report["restarts"] == report["restarts"]
  chex.assert_trees_all_close(again, out, atol=1e-6)


def test_every_round_is_a_candidate_with_every_round(case, tmp_path):
  """Round r of a run is `sanitize` with max_rounds=r+1 and the same seed; every
  round is judged and may be kept or averaged, with or without a workdir."""
  model, params, suspects, clean, watch, holdout, runs = case
  config, every = rounds(2), RestartConfig(runs=1, every_round=True)
  judged = [runs[0], sanitize(model, params, suspects, clean, config)[0]]
  chosen, members, shares, accuracy, _ = _expected(model, params, judged, watch, holdout,
                                                   every.tolerance)
  for workdir in (tmp_path, None):
    out, report = sanitize_restarts(model, params, suspects, clean, watch, holdout, config,
                                    restarts=every, workdir=workdir)
    assert [(c["run"], c["round"]) for c in report["candidates"]] == [(0, 0), (0, 1)]
    np.testing.assert_allclose([c["watched_target_share"] for c in report["candidates"]],
                               shares)
    np.testing.assert_allclose([c["holdout_accuracy"] for c in report["candidates"]],
                               accuracy, atol=1e-6)
    assert (report["chosen"], report["soup"]) == (chosen, members)
    chex.assert_trees_all_close(out, _mean([judged[j] for j in members]), atol=1e-5)
  # A round whose checkpoint is gone (a run saved without keep_rounds keeps its
  # last two) is left out of the judgement; the run is read back, not rerun.
  shutil.rmtree(tmp_path / "rounds" / "1")
  _, report = sanitize_restarts(model, params, suspects, clean, watch, holdout, config,
                                restarts=every, workdir=tmp_path)
  assert [c["round"] for c in report["candidates"]] == [1]
  np.testing.assert_allclose(report["candidates"][0]["watched_target_share"], shares[1])


def test_bad_input_is_refused_with_the_fix(case):
  model, params, suspects, clean, watch, holdout, _ = case
  with pytest.raises(ValueError, match="loss='classification'"):
    sanitize_restarts(model, params, suspects, clean, watch, holdout,
                      dataclasses.replace(CONFIG, finetune=dataclasses.replace(
                          CONFIG.finetune, loss="causal_lm")))
  empty = {k: v[:0] for k, v in watch.items()}
  with pytest.raises(ValueError, match="watched inputs and holdout rows"):
    sanitize_restarts(model, params, suspects, clean, empty, holdout, CONFIG)
