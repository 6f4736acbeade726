"""Smoke tests of victim training on real data with tiny settings."""

import json

from jax_attnalign.victim import VictimConfig, train_classification_victim
from jax_attnalign.victim_lm import LMVictimConfig, train_lm_victim


def test_classification_victim_smoke(shared_data, minilm_path, tmp_path):
  cfg = VictimConfig(data_dir=str(shared_data / "sst2" / "clean"), model=str(minilm_path),
                     attack="badnets", train_size=40, test_size=24, epochs=1,
                     batch_size=8, max_length=32)
  result = train_classification_victim(cfg, tmp_path)
  assert result["poisoned_rows"] == 8 and result["train_rows"] == 40
  assert 0.0 <= result["ca"] <= 1.0 and 0.0 <= result["asr"] <= 1.0
  assert result["triggered_rows"] > 0
  assert (tmp_path / "model" / "config.json").is_file()
  # A finished run is not repeated: the stored result comes back.
  assert train_classification_victim(cfg, tmp_path) == json.loads(
      (tmp_path / "result.json").read_text())


def test_lm_victim_smoke(shared_data, tmp_path):
  cfg = LMVictimConfig(
      backdoorllm_dir=str(shared_data / "backdoorllm"),
      alpaca_path=str(shared_data / "alpaca" / "alpaca_sample_200.json"),
      tokenizer=str(shared_data / "tokenizers" / "llama2"), hidden_size=16,
      num_layers=1, num_heads=2, intermediate_size=24, alpaca_size=20, max_length=48,
      epochs=1, batch_size=64, test_size=4, max_new_tokens=4)
  result = train_lm_victim(cfg, tmp_path)
  assert result["train_rows"] == 1020 and result["poisoned_rows"] == 500
  assert 0.0 <= result["refusal_asr"] <= 1.0
  assert len(result["examples"]["triggered"]) == 4
