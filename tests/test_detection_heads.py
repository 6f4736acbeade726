"""DAN and the head-signal detectors: each feature vector against a NumPy brute force
from captured intermediates of a tiny random BERT, the shared Mahalanobis fit against
numpy.linalg, calibration at 5% on fresh clean inputs, the JSON + npz round trip, and
every detector's AUROC on a small real BadNets victim. Head-output crowding
(`detection.crowding`, a stream detector): its score against a brute force of its
rule, near-duplicates in a stream ranked first, calibration on clean sets."""

import math

import jax
import numpy as np
import pytest

from conftest import SMALL_LENGTH
from jax_attnalign import data, metrics
from jax_attnalign.data.types import TextExample
from jax_attnalign.detection import Calibration, Victim, calibrate, dan, heads, make_detector
from jax_attnalign.data.files import write_npz
from jax_attnalign.errors import CheckpointError, InputError
from jax_attnalign.detection._profile import (fit_gaussian, holdout_split,
                                              ledoit_wolf_shrinkage, mahalanobis)
from jax_attnalign.models import (ModelConfig, PATTERNS, attention_maps, build_model,
                                  run_with_hooks, scale_heads)

NAMES = ("paper", "cosine_profile", "entropy_profile", "output_profile", "importance_profile",
         "dan", "combined")


class DigitTokenizer:
  """Texts of space-separated token ids; [CLS] = 1, [SEP] = 2, padding 0."""
  pad_token_id = 0
  all_special_ids = [0, 1, 2]

  def __call__(self, texts, max_length, truncation):
    del truncation
    return {"input_ids": [[1] + [int(w) for w in t.split()][:max_length - 2] + [2]
                          for t in texts]}


def _examples(n, seed):
  rng = np.random.default_rng(seed)
  return [TextExample(" ".join(map(str, rng.integers(3, 64, rng.integers(2, 11)))),
                      int(rng.integers(0, 2))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny():
  model = build_model(ModelConfig.preset("tiny-bert"), "classification")
  params = jax.device_get(model.init(jax.random.key(0), np.ones((2, 12), np.int32))["params"])
  return Victim(model, params, DigitTokenizer(), max_length=12, batch_size=16)


def _captured(victim, examples, capture):
  batch = victim.encode(examples)
  out, found = run_with_hooks(victim.model, victim.params,
                              {k: batch[k] for k in ("input_ids", "attention_mask")},
                              capture=capture)
  return batch, out, found


def _np_cosine_pairs(vectors):
  """[..., N, F] -> the distinct pairs' cosines [..., N(N-1)/2]."""
  unit = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
  cos = np.einsum("...nf,...mf->...nm", unit, unit)
  rows, cols = np.triu_indices(vectors.shape[-2], 1)
  return cos[..., rows, cols]


def _np_word_rows(victim, examples):
  """The [CLS] row over the words, renormalised (cls_row_nospecial): [B, L, N, S]."""
  batch, _, found = _captured(victim, examples, PATTERNS)
  maps = np.asarray(attention_maps(found), np.float64).transpose(1, 0, 2, 3, 4)
  words = (batch["attention_mask"] > 0) & (batch["special_mask"] == 0)
  rows = np.where(words[:, None, None, :], maps[..., 0, :], 0.0)
  return rows / rows.sum(-1, keepdims=True)


def test_cosine_profile_is_every_head_pair_of_every_layer(tiny):
  examples = _examples(10, 0)
  expected = _np_cosine_pairs(_np_word_rows(tiny, examples)).reshape(10, -1)
  got = heads.CosineProfile().features(tiny, examples)
  assert got.shape == (10, 2 * 6)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_entropy_profile_is_each_heads_cls_row_entropy(tiny):
  examples = _examples(10, 1)
  rows = _np_word_rows(tiny, examples)
  logs = np.log(np.where(rows > 0, rows, 1.0))
  expected = -(rows * logs).sum(-1).reshape(10, -1)
  np.testing.assert_allclose(heads.EntropyProfile().features(tiny, examples), expected,
                             atol=1e-5)


def test_output_profile_is_the_pairwise_cosine_of_cls_head_outputs(tiny):
  examples = _examples(10, 2)
  _, _, found = _captured(tiny, examples, "layers.*.attn.z")  # [B, T, N, H] per layer
  z = np.stack([np.asarray(found[f"layers.{i}.attn.z"], np.float64)[:, 0] for i in range(2)], 1)
  np.testing.assert_allclose(heads.OutputProfile().features(tiny, examples),
                             _np_cosine_pairs(z).reshape(10, -1), atol=1e-5)


def test_importance_profile_is_the_gate_derivative_at_the_prediction(tiny):
  examples = _examples(6, 3)
  batch, out, _ = _captured(tiny, examples, "layers.0.attn.z")
  predicted = np.asarray(out.logits).argmax(-1)
  inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}

  def losses(gates):  # per-example cross-entropy at the undisturbed prediction
    logits = np.asarray(run_with_hooks(tiny.model, tiny.params, inputs, capture="layers.0.attn.z",
                                       edit=scale_heads(gates))[0].logits, np.float64)
    logits -= logits.max(-1, keepdims=True)
    return np.log(np.exp(logits).sum(-1)) - logits[np.arange(len(logits)), predicted]

  eps, expected = 1e-2, np.zeros((6, 2, 4))
  for layer in range(2):
    for head in range(4):
      step = np.zeros((2, 4), np.float32)
      step[layer, head] = eps
      expected[:, layer, head] = (losses(1 + step) - losses(1 - step)) / (2 * eps)
  got = heads.ImportanceProfile().features(tiny, examples)
  np.testing.assert_allclose(got, np.abs(expected).reshape(6, -1), rtol=2e-2, atol=2e-4)


def test_mahalanobis_fit_equals_numpy_linalg():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(80, 5)) @ rng.normal(size=(5, 5)) + 3.0
  labels = rng.integers(0, 3, 80)
  queries = rng.normal(size=(7, 5))
  means, precision = fit_gaussian(x, labels, shrinkage=0.0, standardize=False)
  np.testing.assert_allclose(means, [x[labels == c].mean(0) for c in range(3)])
  centered = x - means[labels]
  cov = centered.T @ centered / len(x)
  expected = np.stack([np.einsum("nd,nd->n", q := queries - m, np.linalg.solve(cov, q.T).T)
                       for m in means], -1)
  np.testing.assert_allclose(mahalanobis(queries, means, precision), expected, rtol=1e-8)
  # Standardising the dimensions changes no distance at s = 0 ...
  np.testing.assert_allclose(mahalanobis(queries, *fit_gaussian(x, labels, shrinkage=0.0)),
                             expected, rtol=1e-8)
  # ... and a given s shrinks toward tr(S)/D I (scikit-learn's ShrunkCovariance).
  _, shrunk = fit_gaussian(x, labels, shrinkage=0.1, standardize=False)
  target = np.trace(cov) / 5 * np.eye(5)
  np.testing.assert_allclose(shrunk, np.linalg.inv(0.9 * cov + 0.1 * target), rtol=1e-8)


def test_ledoit_wolf_weight_equals_its_per_row_definition():
  rng = np.random.default_rng(1)
  for n, d in ((40, 6), (30, 50)):  # more rows than dimensions, and fewer
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, d)
    x -= x.mean(0)
    cov = x.T @ x / n
    mu = np.trace(cov) / d
    distance = np.sum((cov - mu * np.eye(d)) ** 2) / d  # Ledoit & Wolf (2004), lemma 3.1
    spread = sum(np.sum((np.outer(r, r) - cov) ** 2) for r in x) / n ** 2 / d
    assert ledoit_wolf_shrinkage(x) == pytest.approx(min(spread, distance) / distance)


def test_dan_equals_a_numpy_recomputation(tiny):
  clean, incoming = _examples(60, 4), _examples(12, 5)
  detector = dan.DAN().fit(tiny, clean)

  def states(examples):  # [n, L, D]
    _, _, found = _captured(tiny, examples, "layers.*.resid_post")
    return np.stack([np.asarray(found[f"layers.{i}.resid_post"], np.float64)[:, 0]
                     for i in range(2)], 1)

  x, labels = states(clean), np.array([e.label for e in clean])
  fit_rows, held = holdout_split(60, 0.2, 0)
  layer_scores = {"held": [], "incoming": []}
  for layer in range(2):
    f, y = x[fit_rows, layer], labels[fit_rows]
    means = np.stack([f[y == c].mean(0) for c in (0, 1)])
    centered = f - means[y]
    cov = centered.T @ centered / len(f)
    inverse = np.linalg.inv(0.9 * cov + 0.1 * np.trace(cov) / len(cov) * np.eye(len(cov)))
    for name, rows in (("held", x[held, layer]), ("incoming", states(incoming)[:, layer])):
      d = [np.einsum("nd,de,ne->n", rows - m, inverse, rows - m) for m in means]
      layer_scores[name].append(np.min(d, 0))
  held_scores, scores = (np.stack(layer_scores[k], -1) for k in ("held", "incoming"))
  expected = ((scores - held_scores.mean(0)) / held_scores.std(0)).max(-1)
  # The features are float32 from two compiled paths; the inverse of the shrunk 48-row
  # covariance (condition number ~50) amplifies their rounding, so scores of order 1 agree
  # to ~2e-4. The rule's alternatives (one class's distance instead of the nearest,
  # in-sample standardisation, shrinkage 0.2, mean over layers) move them by 0.47-2.5.
  np.testing.assert_allclose(detector.score(tiny, incoming), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_calibration_flags_five_percent_of_fresh_clean_inputs_and_round_trips(
    tiny, name, tmp_path):
  detector = make_detector(name).fit(tiny, _examples(200, 10))
  calibration = calibrate(detector, tiny, _examples(300, 11), fpr=0.05)
  fresh = _examples(600, 12)
  scores = detector.score(tiny, fresh)
  assert scores.shape == (600,)
  # Binomial sampling error of the 300-row quantile and of the 600 fresh rows: 3 sigma.
  sigma = np.sqrt(0.05 * 0.95 * (1 / 300 + 1 / 600))
  assert abs(calibration.flag(scores).mean() - 0.05) < 3 * sigma
  calibration.save(tmp_path / "detector.json", detector)
  loaded, again = Calibration.load(tmp_path / "detector.json")
  assert loaded == calibration and again.settings() == detector.settings()
  np.testing.assert_array_equal(again.score(tiny, fresh), scores)


@pytest.mark.parametrize("name, settings", [
    ("cosine_profile", {"view": "cls"}), ("entropy_profile", {"shrinkage": 1.5}),
    ("paper", {"statistic": "max"}), ("dan", {"aggregation": "sum"}), ("dan", {"holdout": 1.0}),
    ("combined", {"parts": ["cosine_profile"]}), ("combined", {"parts": ["dan", "nope"]})])
def test_bad_settings_are_refused(name, settings):
  with pytest.raises(ValueError, match=name):
    make_detector(name, **settings)


@pytest.mark.parametrize("name", NAMES[1:])
def test_scoring_before_fitting_is_refused(tiny, name):
  with pytest.raises(ValueError, match="fit the detector"):
    make_detector(name).score(tiny, _examples(2, 0))


def test_every_detectors_auroc_on_a_small_badnets_victim(small_badnets):
  """Measured (400 clean test rows + their 192 triggered non-target rows, fitted on
  400 clean validation rows): paper 0.69, cosine_profile 0.21, entropy_profile 0.48,
  output_profile 0.45, importance_profile 0.44, dan 0.47, combined 0.31.

  This 2-layer victim trained from scratch is weak (clean accuracy 0.68, ASR 0.97):
  its clean inputs' heads already attend alike (median 99th-percentile cosine
  0.998), and the triggered inputs sit at the dense centre of the clean profiles
  and near the target class mean, so every distance-to-clean score ranks them
  below clean ones. Only the paper's one-sided statistic separates at all.
  """
  victim = Victim(small_badnets["model"], small_badnets["params"], small_badnets["tokenizer"],
                  max_length=SMALL_LENGTH)
  sst2 = small_badnets["sst2"]
  fit_rows = data.load_classification(sst2, "dev", limit=400)
  test_rows = data.load_classification(sst2, "test", limit=400)
  incoming = test_rows + small_badnets["attack"].triggered_test(test_rows)
  poisoned = np.array([e.poisoned for e in incoming])
  aurocs = {name: metrics.detection_auroc(
      make_detector(name).fit(victim, fit_rows).score(victim, incoming), poisoned)
            for name in NAMES}
  print("AUROC on the small BadNets victim:", {k: round(v, 3) for k, v in aurocs.items()})
  assert aurocs["paper"] > 0.65, aurocs


def _brute_force_scores(features_fit, features_set, quantile):
  """The rule, loop by loop: [m, L, K] clean features, [n, L, K] scored set; each
  input's neighbourhood from its r-th nearest clean row found by sorting, the
  beta-binomial mid-p tail summed from its pmf, C(n, j) B(j + a, n - j + b) / B(a, b)."""
  mean, std = features_fit.mean(0), features_fit.std(0) + 1e-6
  m, layers = features_fit.shape[:2]
  rank = max(1, round((1 - quantile) * m))

  def unit(x):
    z = (x - mean) / std
    return z / np.linalg.norm(z, axis=-1, keepdims=True)

  def log_beta(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

  def pmf(j, n, a, b):
    return math.comb(n, j) * math.exp(log_beta(j + a, n - j + b) - log_beta(a, b))

  fit, scored = unit(features_fit), unit(features_set)
  n, score = len(scored), np.zeros(len(scored))
  for layer in range(layers):
    for i in range(n):
      to_fit = sorted((float(np.dot(scored[i, layer], fit[j, layer])) for j in range(m)),
                      reverse=True)
      k = sum(float(np.dot(scored[i, layer], scored[j, layer])) >= to_fit[rank - 1]
              for j in range(n) if j != i)
      tail = (sum(pmf(j, n - 1, rank, m - rank + 1) for j in range(k + 1, n))
              + 0.5 * pmf(k, n - 1, rank, m - rank + 1))
      score[i] -= math.log(max(tail, 1e-300))
  return score


def _token_mean_head_outputs(victim, examples):
  """Each layer's captured attn.z averaged over the unpadded tokens, heads
  concatenated: [n, L, N H]."""
  batch, _, found = _captured(victim, examples, "layers.*.attn.z")
  mask = batch["attention_mask"].astype(np.float64)  # [B, T]
  return np.stack([np.einsum("bt,btnh->bnh", mask / mask.sum(1, keepdims=True),
                             np.asarray(found[f"layers.{i}.attn.z"], np.float64)
                             ).reshape(len(examples), -1) for i in range(2)], 1)


def test_crowding_equals_a_brute_force_of_its_rule(tiny):
  clean, stream = _examples(40, 20), _examples(14, 21)
  detector = make_detector("crowding", quantile=0.9).fit(tiny, clean)
  np.testing.assert_allclose(detector.features(tiny, stream),
                             _token_mean_head_outputs(tiny, stream), atol=1e-5)
  expected = _brute_force_scores(_token_mean_head_outputs(tiny, clean),
                                 _token_mean_head_outputs(tiny, stream), 0.9)
  np.testing.assert_allclose(detector.score(tiny, stream), expected, rtol=1e-6, atol=1e-6)


def test_crowding_ranks_near_duplicates_in_a_stream_first(tiny):
  """Ten inputs that all read alike (one text, the way a backdoor maps triggered
  inputs onto one behaviour) among thirty varied ones are ranked first; alone in
  a stream of varied inputs the same text is not."""
  detector = make_detector("crowding").fit(tiny, _examples(80, 22))
  varied, repeated = _examples(30, 23), _examples(1, 24) * 10
  scores = detector.score(tiny, varied + repeated)
  assert scores[30:].min() > scores[:30].max()
  alone = detector.score(tiny, varied + repeated[:1])
  assert alone[30] < scores[30:].min()


def test_crowding_flags_five_percent_of_a_fresh_clean_set_and_round_trips(tiny, tmp_path):
  detector = make_detector("crowding").fit(tiny, _examples(200, 10))
  calibration = calibrate(detector, tiny, _examples(300, 11), fpr=0.05)
  fresh = _examples(600, 12)
  scores = detector.score(tiny, fresh)
  # Binomial sampling error of the 300-row quantile and of the 600 fresh rows: 3 sigma.
  sigma = np.sqrt(0.05 * 0.95 * (1 / 300 + 1 / 600))
  assert abs(calibration.flag(scores).mean() - 0.05) < 3 * sigma
  calibration.save(tmp_path / "detector.json", detector)
  loaded, again = Calibration.load(tmp_path / "detector.json")
  assert loaded == calibration and again.settings() == {"quantile": 0.99}
  np.testing.assert_array_equal(again.score(tiny, fresh), scores)


def test_a_calibration_of_the_earlier_crowding_form_does_not_load(tiny, tmp_path):
  """The second form saved its fit rows as 'reference' beside a 'radius' per layer;
  scoring with them would read features of another shape: loading refuses."""
  detector = make_detector("crowding").fit(tiny, _examples(40, 10))
  calibrate(detector, tiny, _examples(40, 11), fpr=0.05).save(tmp_path / "d.json", detector)
  state = detector.state()
  write_npz(tmp_path / "d.json.npz", mean=state["mean"], std=state["std"],
            radius=np.full(2, 0.5), reference=state["fit_units"])
  with pytest.raises(CheckpointError, match="Refit and recalibrate"):
    Calibration.load(tmp_path / "d.json")


def test_a_calibration_saved_again_without_arrays_drops_the_old_ones(tiny, tmp_path):
  detector = make_detector("crowding").fit(tiny, _examples(200, 10))
  calibration = calibrate(detector, tiny, _examples(300, 11), fpr=0.05)
  calibration.save(tmp_path / "detector.json", detector)
  assert (tmp_path / "detector.json.npz").exists()
  calibration.save(tmp_path / "detector.json")  # no fitted detector given this time
  assert not (tmp_path / "detector.json.npz").exists()
  _, again = Calibration.load(tmp_path / "detector.json")
  with pytest.raises(ValueError, match="fit the detector"):  # not the earlier fit's arrays
    again.score(tiny, _examples(4, 0))


def test_crowding_refuses_what_it_cannot_score(tiny):
  with pytest.raises(ValueError, match="crowding.quantile"):
    make_detector("crowding", quantile=1.0)
  with pytest.raises(ValueError, match="fit the detector"):
    make_detector("crowding").score(tiny, _examples(4, 0))
  with pytest.raises(InputError, match="at least 8 clean rows"):
    make_detector("crowding").fit(tiny, _examples(5, 0))
  detector = make_detector("crowding").fit(tiny, _examples(20, 0))
  with pytest.raises(InputError, match="at least 2"):
    detector.score(tiny, _examples(1, 1))
