"""The detection benchmark's harness: its sets, ROC points and per-detector run."""

import dataclasses
import json

import numpy as np
import pytest

from jax_attnalign import metrics
from jax_attnalign.data.types import TextExample
from jax_attnalign.detection import DETECTORS, Calibration
from jax_attnalign.harness.detection import (DetectionSetup, detection_sets, detection_table,
                                             evaluate_detector, roc_points)


def test_roc_area_is_the_auroc_with_ties():
  rng = np.random.default_rng(0)
  clean = rng.integers(0, 6, 50).astype(float)  # many ties, within and across groups
  triggered = rng.integers(2, 9, 40).astype(float)
  fpr, tpr = roc_points(clean, triggered)
  area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
  brute = np.mean([(t > c) + 0.5 * (t == c) for t in triggered for c in clean])
  assert area == pytest.approx(brute, abs=1e-12)
  assert area == pytest.approx(metrics.detection_auroc(
      np.r_[clean, triggered], np.r_[np.zeros(50), np.ones(40)]), abs=1e-12)


def _write_split(path, n, name):
  rows = ["sentence\tlabel"] + [f"{name}{i} was {'good' if i % 2 else 'bad'}\t{i % 2}"
                                for i in range(n)]
  path.write_text("\n".join(rows) + "\n")


def test_detection_sets_are_sized_and_fitted_on_other_rows(tmp_path):
  _write_split(tmp_path / "train.tsv", 120, "train")
  _write_split(tmp_path / "test.tsv", 100, "test")
  cfg = {"data_dir": str(tmp_path), "dataset": "sst2", "attack": "badnets", "target": 1,
         "attack_kwargs": [], "seed": 3}
  sets = detection_sets(cfg, DetectionSetup(fit_size=40, calibration_size=30, test_size=20))
  assert [len(sets[k]) for k in ("fit", "calibration", "clean", "triggered")] == [40, 30, 20, 20]
  assert not {e.text for e in sets["fit"]} & {e.text for e in sets["calibration"]}
  assert all(e.text.startswith("train") for k in ("fit", "calibration") for e in sets[k])
  assert all(e.poisoned and e.label != 1 for e in sets["triggered"])
  assert not any(e.poisoned for k in ("fit", "calibration", "clean") for e in sets[k])
  assert detection_sets(cfg, DetectionSetup(40, 30, 20)) == sets  # seeded


class _Length:
  """A stand-in detector for the harness: score = the number of words."""
  name = "length"
  fits = 0

  def fit(self, victim, clean):
    del victim, clean
    type(self).fits += 1  # a subclass counts its own fits
    return self

  def score(self, victim, examples):
    del victim
    return np.array([len(e.text.split()) for e in examples], float)

  def settings(self):
    return {}

  def state(self):
    return {}

  def load_state(self, state):
    del state


def test_evaluate_detector_measures_and_resumes(tmp_path, monkeypatch):
  monkeypatch.setitem(DETECTORS, "length", _Length)
  words = lambda n, label=0, poisoned=False: TextExample(" ".join(["w"] * n), label, poisoned)
  sets = {"fit": [words(3)] * 4, "calibration": [words(n) for n in range(1, 21)],
          "clean": [words(n) for n in (5, 10, 19, 20, 21)],
          "triggered": [words(n, poisoned=True) for n in (2, 20, 25, 30)]}
  result = evaluate_detector("length", {}, None, sets, 0.1, tmp_path / "run")
  threshold = np.quantile(np.arange(1, 21), 0.9, method="higher")  # 19: flags 20 and up
  assert result["threshold"] == threshold
  assert result["fpr"] == 2 / 5 and result["tpr"] == 3 / 4
  assert result["auroc"] == pytest.approx(np.mean([(t > c) + 0.5 * (t == c) for t in
                                                   (2, 20, 25, 30) for c in (5, 10, 19, 20, 21)]))
  calibration, _ = Calibration.load(tmp_path / "run" / "calibration.json")
  assert calibration.threshold == threshold and calibration.detector == "length"
  assert evaluate_detector("length", {}, None, sets, 0.1, tmp_path / "run") == result
  assert _Length.fits == 1  # read back, not refitted
  table = detection_table([{**result, "dataset": "sst2", "attack": "badnets", "seed": 0},
                           {**result, "dataset": "sst2", "attack": "badnets", "seed": 1}])
  assert "| sst2 | badnets | length | " in table and "| 0, 1 |" in table
  assert json.loads((tmp_path / "run" / "result.json").read_text()) == result


class _Twins(_Length):
  """A set-level detector: an input's score is how many other inputs of the scored
  set have its word count."""
  name = "twins"
  set_level = True

  def score(self, victim, examples):
    lengths = super().score(victim, examples)
    return np.array([(lengths == n).sum() - 1 for n in lengths], float)


def test_set_level_detector_scores_one_stream_and_the_clean_alone(tmp_path, monkeypatch):
  """A set-level detector scores clean and triggered test inputs as one stream
  (`fpr` on its clean ones) and the clean ones again alone (`fpr_clean_stream`)."""
  monkeypatch.setitem(DETECTORS, "twins", _Twins)
  words = lambda n, poisoned=False: TextExample(" ".join(["w"] * n), 0, poisoned)
  sets = {"fit": [words(3)] * 2,
          "calibration": [words(n) for n in [1, 1] + list(range(2, 20))],  # threshold 1
          "clean": [words(n) for n in (4, 4, 7, 8, 9)],
          "triggered": [words(7, poisoned=True)] * 3}
  result = evaluate_detector("twins", {}, None, sets, 0.05, tmp_path / "run")
  assert result["threshold"] == 1  # twins in a clean set: flag 2 or more
  # In the stream, 7 words has 3 twins (score 3, flagged), 4 words one (score 1).
  assert result["tpr"] == 1.0 and result["fpr"] == 1 / 5
  assert result["fpr_clean_stream"] == 0.0  # alone, no clean input has two twins
  scores = np.load(tmp_path / "run" / "scores.npz")
  np.testing.assert_array_equal(scores["clean"], [1, 1, 3, 0, 0])
  table = detection_table([{**result, "dataset": "sst2", "attack": "cbat", "seed": 0}])
  assert "| sst2 | cbat | twins | 0.900 | 1.000 | 0.200 | 0.000 | 0 |" in table


class _Answers:
  """A stand-in chat victim: an input's 'answer' is its word count, decoded per
  set of prompts (as ChatVictim.encode caches a set's) and counted."""

  def __init__(self):
    self.decoded, self._kept = 0, {}

  def encode(self, examples):
    key = tuple(e.text for e in examples)
    if key not in self._kept:
      self.decoded += len(examples)
      self._kept[key] = {"answer": np.array([len(e.text.split()) for e in examples])}
    return self._kept[key]

  def keep_answers(self, examples, arrays):
    self._kept[tuple(e.text for e in examples)] = arrays


class _SameAnswer(_Twins):
  """Twins over the victim's answers, as answer collapse reads a chat victim's."""
  name = "same_answer"
  needs_answers = True

  def score(self, victim, examples):
    answers = victim.encode(examples)["answer"]
    return np.array([(answers == a).sum() - 1 for a in answers], float)


def test_answers_to_the_clean_inputs_are_decoded_once(tmp_path, monkeypatch):
  """Scoring the clean inputs alone reuses their answers from the stream: the
  victim decodes the calibration set and the stream, nothing more, and the
  clean-alone rate is the one those answers give."""
  monkeypatch.setitem(DETECTORS, "same_answer", _SameAnswer)
  words = lambda n, poisoned=False: TextExample(" ".join(["w"] * n), 0, poisoned)
  sets = {"fit": [words(3)] * 2, "calibration": [words(n) for n in [1, 1] + list(range(2, 20))],
          "clean": [words(n) for n in (4, 4, 7, 8, 9)], "triggered": [words(7, True)] * 3}
  victim = _Answers()
  result = evaluate_detector("same_answer", {}, victim, sets, 0.05, tmp_path / "run")
  assert victim.decoded == len(sets["calibration"]) + len(sets["clean"]) + len(sets["triggered"])
  assert (result["tpr"], result["fpr"], result["fpr_clean_stream"]) == (1.0, 1 / 5, 0.0)


def test_another_detector_picks_the_defense_suspects(tmp_path, minilm_path):
  """With DefenseSetup.detector='dan' the suspects are the stream inputs DAN flags
  (fitted on the defender's clean rows, calibrated on its calibration rows),
  highest score first; the paper's detector still comes back for the stopping rule."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax_attnalign import data  # pylint: disable=g-import-not-at-top
  from jax_attnalign.defense import DetectorConfig  # pylint: disable=g-import-not-at-top
  from jax_attnalign.detection import Victim, calibrate, make_detector  # pylint: disable=g-import-not-at-top
  from jax_attnalign.harness import pipeline  # pylint: disable=g-import-not-at-top
  from jax_attnalign.models import ModelConfig, build_model  # pylint: disable=g-import-not-at-top
  _write_split(tmp_path / "train.tsv", 120, "train")
  _write_split(tmp_path / "test.tsv", 100, "test")
  tokenizer = data.load_tokenizer(minilm_path)
  model = build_model(ModelConfig.preset("tiny-bert", vocab_size=len(tokenizer),
                                         max_position_embeddings=16), "classification")
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"]
  setup = pipeline.DefenseSetup(victim="", data_dir=str(tmp_path), detector="dan",
                                stream_clean=30, stream_triggered=20, max_suspects=5,
                                clean_size=40, calibration_size=30, max_length=16)
  rows = pipeline.defense_examples(setup)
  with pytest.raises(ValueError, match=r"100 clean test inputs; the monitored stream takes 100"):
    pipeline.defense_examples(dataclasses.replace(setup, stream_clean=100))  # none held out
  sets = pipeline.defense_data(setup, tokenizer)
  suspects, flagged, report, paper = pipeline.choose_suspects(
      model, params, tokenizer, rows, sets, setup, DetectorConfig(fpr=0.2), 16)
  victim = Victim(model, params, tokenizer, 16, 16)
  dan = make_detector("dan").fit(victim, rows["clean_train"])
  calibration = calibrate(dan, victim, rows["calibration"], 0.2)
  scores = dan.score(victim, rows["stream"])
  hits = np.flatnonzero(calibration.flag(scores))
  chosen = hits[np.argsort(-scores[hits])][:5]
  assert report["detector"] == "dan" and report["flagged"] == len(hits) > 0
  assert report["threshold"] == calibration.threshold
  np.testing.assert_array_equal(suspects["input_ids"], sets["stream"]["input_ids"][chosen])
  np.testing.assert_array_equal(flagged["input_ids"], sets["stream"]["input_ids"][hits])
  assert paper.view == DetectorConfig().view and "labels" not in suspects
