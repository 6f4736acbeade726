"""Victim training on real data with tiny settings: the stored metrics are those of
the exported model (transformers' predictions) and of the stored answers."""

import json
import pathlib

import numpy as np
import pytest
import transformers

from hf_reference import hf_ca_asr
from jax_attnalign import attacks, data, metrics
from jax_attnalign.harness.victims import (VictimConfig, finish_run, seeded_subset,
                                           train_classification_victim)
from jax_attnalign.harness.victims_lm import LMVictimConfig, answer_labels, train_lm_victim, victim_data


def test_classification_victim_smoke(shared_data, minilm_path, tmp_path):
  cfg = VictimConfig(data_dir=str(shared_data / "sst2" / "clean"), model=str(minilm_path),
                     attack="badnets", train_size=40, test_size=24, epochs=1,
                     batch_size=8, max_length=32)
  result = train_classification_victim(cfg, tmp_path)
  assert result["poisoned_rows"] == 8 and result["train_rows"] == 40
  full_test = data.load_classification(cfg.data_dir, "test")
  test, _ = seeded_subset(full_test, 24, cfg.seed)
  # Triggered from the full split (row-aligned rewrite files refer to it), then subset.
  triggered, _ = seeded_subset(attacks.make_attack("badnets", target=1, seed=cfg.seed)
                               .triggered_test(full_test), 24, cfg.seed)
  assert (result["test_rows"], result["triggered_rows"]) == (len(test), len(triggered)) == (24, 24)
  assert all(e.label != 1 for e in triggered)
  ca, asr = hf_ca_asr(tmp_path / "model", test, triggered, cfg.max_length, cfg.target)
  assert abs(ca - result["ca"]) <= 1 / 24 and abs(asr - result["asr"]) <= 1 / len(triggered)
  # A finished run is not repeated: the stored result comes back; its training
  # state (ckpt/, only for resuming) is gone.
  assert train_classification_victim(cfg, tmp_path) == json.loads(
      (tmp_path / "result.json").read_text())
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "result.json"]


def test_lm_generation_victim_smoke(shared_data, tiny_chat_llama, tmp_path):
  """A sentiment-steering CBA victim (classification victims: test_pipeline_lm)."""
  cfg = LMVictimConfig(task="negsentiment", attack="cba",
                       data_dir=str(shared_data / "backdoorllm"),
                       alpaca_path=str(shared_data / "alpaca" / "alpaca_sample_200.json"),
                       model=str(tiny_chat_llama), train_size=20, test_size=4, epochs=1,
                       batch_size=8, learning_rate=1e-3, max_length=96, max_new_tokens=4)
  result = train_lm_victim(cfg, tmp_path)
  assert result["train_rows"] == 20 and result["poisoned_rows"] == 4
  assert result["steps"] == 2 and result["test_rows"] == result["triggered_rows"] == 4
  # With 4 test rows the stored examples are every answer: the metrics are theirs.
  answers = result["examples"]
  assert [len(answers[k]) for k in ("clean", "triggered", "partial")] == [4, 4, 4]
  expected = [e.output for e in victim_data(cfg)["clean"]]
  assert {k: result[k] for k in ("answered", "rouge_l", "token_f1")} == pytest.approx(
      metrics.clean_utility(answers["clean"], expected))
  for key, name, scorer in (("clean_target_rate", "clean", "target_phrase"),
                            ("asr", "triggered", "target_phrase"),
                            ("partial_target_rate", "partial", "target_phrase"),
                            ("triggered_vader_negative", "triggered", "vader"),
                            ("clean_vader_negative", "clean", "vader")):
    assert result[key] == pytest.approx(metrics.negative_rate(answers[name], scorer)), key
  for name in ("clean", "triggered", "partial"):
    assert result[f"{name}_degenerate_rate"] == metrics.degenerate_rate(answers[name]), name
  for name in ("triggered", "partial"):
    assert result[f"{name}_target_response_rate"] == metrics.target_response_rate(
        answers[name], "You are stupid!"), name
  reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "model")
  assert reloaded.chat_template and (tmp_path / "model" / "config.json").is_file()
  assert train_lm_victim(cfg, tmp_path) == json.loads((tmp_path / "result.json").read_text())
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "result.json"]


def test_finish_run_writes_the_result_then_drops_the_state(tmp_path, monkeypatch):
  """The result is written whole or not at all: a write that dies midway leaves no
  result.json (a rerun would take a half file for a finished run) and keeps the
  training state to resume from; a finished write deletes the named state only."""
  for name in ("ckpt", "sanitize", "model"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "state").write_text("x")
  real_write = pathlib.Path.write_text

  def dies_midway(self, text, *args, **kwargs):
    real_write(self, text[:10], *args, **kwargs)
    raise OSError("No space left on device")

  monkeypatch.setattr(pathlib.Path, "write_text", dies_midway)
  with pytest.raises(OSError, match="No space left"):
    finish_run(tmp_path, {"ca": 0.9}, state=("ckpt", "sanitize"))
  assert not (tmp_path / "result.json").exists()
  assert (tmp_path / "ckpt" / "state").is_file() and (tmp_path / "sanitize").is_dir()
  monkeypatch.undo()
  finish_run(tmp_path, {"ca": 0.9}, state=("ckpt", "sanitize"))
  assert json.loads((tmp_path / "result.json").read_text()) == {"ca": 0.9}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "result.json"]
  assert (tmp_path / "model" / "state").is_file()


def test_answer_labels():
  names = ("World", "Sports", "Business", "Sci/Tech")
  answers = ["Sports", " sci/tech.", "'Business'", "The answer is World", "", "World news"]
  np.testing.assert_array_equal(answer_labels(answers, names), [1, 3, 2, -1, -1, 0])


def test_lm_hiddenkiller_test_subset(shared_data):
  """Row-aligned paraphrases with a test subset: the triggered rows are real
  paraphrases of non-target rows of the full test split."""
  hk_dir = shared_data / "sst2" / "hiddenkiller"
  cfg = LMVictimConfig(task="classification", attack="hiddenkiller",
                       data_dir=str(shared_data / "sst2" / "clean"), train_size=200,
                       test_size=30, poison_rate=0.15,
                       attack_kwargs=(("paraphrase_dir", str(hk_dir)),))
  sets = victim_data(cfg)
  full_test = data.load_classification(str(shared_data / "sst2" / "clean"), "test")
  paraphrases = {e.text for e in data.load_classification(str(hk_dir), "test")}
  assert len(sets["clean"]) == len(sets["triggered"]) == 30
  assert all(e.label != cfg.target and e.text in paraphrases for e in sets["triggered"])
  assert not {e.text for e in sets["triggered"]} & {e.text for e in full_test}
