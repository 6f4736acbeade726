"""The shipped default configuration (`SanitizeConfig()` and the pipeline's default
detector) end to end on a real backdoor: the small BadNets BERT trained on real
SST-2 (conftest.small_badnets; ASR about 0.97 on the held-out triggered rows).

Measured on this victim (seed 0, 2 CPU cores; about 45-60 s per defense):
  oracle suspects (the stream's triggered inputs): ASR 0.967 -> 0.762, CA 0.649 -> 0.689;
  detector suspects: the detector flags 16 of the 300 stream inputs, 5 of them
    triggered (true-positive rate 5% at its 5% false-positive rate), and the
    ASR barely moves (0.967 -> 0.945).
The defaults were chosen on the pretrained MiniLM (DESIGN.md, the demo), whose
fine-tuning takes minutes here; on this 2-layer model trained from scratch the
detector does not find the triggered inputs. The detector test is a strict
xfail: it fails the run the day the default detector finds them, so the
margins below then guard it.
"""

import pytest

from conftest import SMALL_LENGTH
from jax_attnalign import save_pretrained
from jax_attnalign.defense.sanitize import SanitizeConfig
from jax_attnalign.harness.pipeline import DefenseSetup, defend_victim


def _defend_with_defaults(small_badnets, minilm_path, tmp_path, suspects: str) -> dict:
  victim = tmp_path / "victim"
  save_pretrained(small_badnets["model"], small_badnets["params"], victim)
  setup = DefenseSetup(victim=str(victim), tokenizer=str(minilm_path),
                       data_dir=str(small_badnets["sst2"]), max_length=SMALL_LENGTH,
                       suspects=suspects)
  result = defend_victim(setup, SanitizeConfig(), tmp_path / "defend")
  before, after, d = result["before"], result["after"], result["detection"]
  held = result["inputs"]
  print(f"default config, {suspects} suspects: {d['suspects']} ({d['suspects_triggered']} "
        f"triggered; the detector flags {d['flagged']} of the {held['stream']} stream inputs);"
        f" CA {before['ca']:.3f} -> {after['ca']:.3f} on {held['held_clean']} held-out clean"
        f" SST-2 test rows, ASR {before['asr']:.3f} -> {after['asr']:.3f} on "
        f"{held['held_triggered']} triggered ones; {len(result['report']['rounds'])} round(s)")
  assert before["asr"] > 0.9  # a real backdoor to remove
  return result


def test_default_sanitisation_lowers_asr_with_oracle_suspects(small_badnets, minilm_path,
                                                              tmp_path):
  """The default method, handed the stream's triggered inputs, removes much of the
  backdoor without costing clean accuracy."""
  result = _defend_with_defaults(small_badnets, minilm_path, tmp_path, "oracle")
  before, after = result["before"], result["after"]
  assert result["detection"]["suspects"] == result["detection"]["suspects_triggered"] > 0
  assert after["asr"] < before["asr"] - 0.15
  assert after["ca"] > before["ca"] - 0.03


@pytest.mark.xfail(strict=True, reason="on this 2-layer scratch victim the default detector "
                   "flags 5 of the 100 triggered stream inputs; ASR 0.967 -> 0.945 measured")
def test_default_config_with_detector_suspects_removes_the_backdoor(small_badnets,
                                                                    minilm_path, tmp_path):
  result = _defend_with_defaults(small_badnets, minilm_path, tmp_path, "detector")
  before, after = result["before"], result["after"]
  assert after["asr"] < before["asr"] - 0.3
  assert after["ca"] > before["ca"] - 0.05
