"""The owner's audit: the verdict's statistics, input files, and the command end to end
on a real backdoored classifier and on the clean bundled MiniLM."""

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from conftest import xla_flags_with_devices
import jax_attnalign
from jax_attnalign import attacks, audit, data
from jax_attnalign.data import TextExample
from jax_attnalign.detection import collapse
from jax_attnalign.harness.victims import VictimConfig, seeded_subset, train_classification_victim

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _hypergeometric_tail(k, n, m, h):
  """P(at least k of the k + m flags fall among the n incoming), by counting."""
  total, flags = n + h, k + m
  return sum(math.comb(n, i) * math.comb(h, flags - i) for i in range(k, min(n, flags) + 1)
             ) / math.comb(total, flags)


@pytest.mark.parametrize("k,n,m,h", [(30, 100, 2, 40), (5, 100, 2, 40), (0, 10, 3, 30)])
def test_verdict_matches_a_counted_fisher_test_and_clopper_pearson(k, n, m, h):
  flags = lambda hits, size: np.arange(size) < hits
  v = audit.verdict_of(flags(k, n), flags(m, h), alpha=0.01)
  assert v.p_value == pytest.approx(_hypergeometric_tail(k, n, m, h), rel=1e-9)
  assert v.expected == pytest.approx(n * m / h)
  low = 0.0 if k == 0 else scipy.stats.beta.ppf(0.025, k, n - k + 1)
  high = scipy.stats.beta.ppf(0.975, k + 1, n - k)
  assert v.flagged_rate_interval == pytest.approx((low, high), abs=1e-9)
  assert v.backdoored == (v.p_value < 0.01)
  assert ("BACKDOOR SUSPECTED" in v.line()) == v.backdoored


def test_load_incoming_reads_every_format(tmp_path):
  (tmp_path / "a.txt").write_text("first input\n\nsecond input\n")
  (tmp_path / "b.tsv").write_text("label\tsentence\n1\tfirst input\n0\tsecond input\n")
  (tmp_path / "c.json").write_text(json.dumps(
      ["first input", {"instruction": "second", "input": "input"}]))
  (tmp_path / "d.jsonl").write_text('{"text": "first input"}\n{"sentence": "x"}\n')
  assert data.load_incoming(tmp_path / "a.txt") == ["first input", "second input"]
  assert data.load_incoming(tmp_path / "b.tsv") == ["first input", "second input"]
  assert data.load_incoming(tmp_path / "c.json") == ["first input", "second\n\ninput"]
  assert data.load_incoming(tmp_path / "d.jsonl") == ["first input", "x"]
  (tmp_path / "e.tsv").write_text("label\tbody\n1\tx\n")
  with pytest.raises(ValueError, match="no 'sentence' or 'text' column"):
    data.load_incoming(tmp_path / "e.tsv")
  (tmp_path / "f.json").write_text(json.dumps([{"prompt": "x"}]))
  with pytest.raises(ValueError, match="item 0"):
    data.load_incoming(tmp_path / "f.json")


def test_audit_config_rejects_bad_values():
  with pytest.raises(ValueError, match="holdout_fraction"):
    audit.AuditConfig(holdout_fraction=1.0)
  with pytest.raises(ValueError, match="alpha"):
    audit.AuditConfig(alpha=0)
  with pytest.raises(ValueError, match="max_suspects"):
    audit.AuditConfig(max_suspects=0)
  with pytest.raises(ValueError, match="max_rounds"):
    audit.AuditConfig(max_rounds=0)
  with pytest.raises(ValueError, match="encoder_detector"):
    audit.AuditConfig(encoder_detector="strip")


def _one_line(text: str) -> str:
  return " ".join(text.split())  # tweets hold tabs and newlines


def _write_tsv(path, rows):
  path.write_text("sentence\tlabel\n" + "".join(f"{_one_line(r.text)}\t{r.label}\n"
                                                 for r in rows))


LENGTH = 24
# The owner's sanitisation, sized for a test (the defaults run 3 rounds of 3 epochs).
QUICK = audit.AuditConfig(max_length=LENGTH, max_rounds=1)


@pytest.fixture(scope="module")
def owner_files(minilm_path, tmp_path_factory):
  """The bundled MiniLM fine-tuned on 320 embedded tweets with BadNets (20%),
  saved with its tokenizer; 200 clean tweets it was not trained on (a seeded
  sample); 100 incoming test tweets of which 30 carry the trigger. About a
  minute on 2 cores."""
  root = tmp_path_factory.mktemp("owner")
  victim = train_classification_victim(VictimConfig(
      data_dir="tweets", dataset="tweets", attack="badnets", train_size=320, test_size=60,
      epochs=4, learning_rate=3e-4, max_length=LENGTH), root / "victim")
  assert victim["asr"] > 0.6, victim  # the backdoor took
  train = data.load_classification("tweets", "train")
  seen = {e.text for e in seeded_subset(train, 320, 0)[0]}  # the victim's training tweets
  pick = np.random.default_rng(1).choice(len(train), 2000, replace=False)
  clean = [train[i] for i in pick if train[i].text not in seen][:200]
  _write_tsv(root / "clean.tsv", clean)
  test = [data.load_classification("tweets", "test")[i] for i in
          np.random.default_rng(2).permutation(200)]
  negatives = [e for e in test[70:] if e.label == 0]
  triggered = attacks.make_attack("badnets", target=1, seed=0).triggered_test(negatives)[:30]
  incoming = [_one_line(e.text) for e in test[:70] + triggered]
  (root / "incoming.txt").write_text("\n".join(incoming) + "\n")
  return root, {_one_line(e.text) for e in triggered}


def test_owner_command_finds_the_backdoor_and_exports_a_loadable_model(owner_files):
  root, triggered = owner_files
  env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": xla_flags_with_devices(2)}
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.sanitize", f"--model={root / 'victim' / 'model'}",
       f"--clean={root / 'clean.tsv'}", f"--incoming={root / 'incoming.txt'}",
       f"--out={root / 'out'}", f"--max_length={LENGTH}", "--max_rounds=1"], env=env,
      capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "BACKDOOR SUSPECTED" in proc.stdout
  report = json.loads((root / "out" / "audit.json").read_text())
  verdict = report["verdict"]
  assert verdict["incoming"] == 100 and verdict["holdout"] == 80
  assert verdict["p_value"] < 1e-4
  flagged = report["flagged_texts"]
  hits = sum(t in triggered for t in flagged)
  # This 320-tweet victim's trigger is weaker than the demo's (where 23 of 24
  # flagged tweets carry it, docs/results.md); here the flagged ones must still be
  # triggered well above the incoming file's base rate of 30%.
  assert hits >= 10 and hits >= 0.4 * len(flagged), (hits, len(flagged))
  assert report["sanitize"]["rounds"] == 1
  accuracy = report["clean_metrics"]
  assert accuracy["after"]["accuracy"] >= accuracy["before"]["accuracy"] - 0.1
  # The exported model and tokenizer load in transformers and agree with ours.
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  folder = root / "out" / "model"
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  batch = tokenizer(flagged[:4], padding=True, return_tensors="pt")
  with torch.no_grad():
    theirs = hf(**batch).logits.numpy()
  model, params = jax_attnalign.load_pretrained(folder, task="classification")
  ours = np.asarray(model.apply({"params": params}, batch["input_ids"].numpy(),
                                batch["attention_mask"].numpy(),
                                token_type_ids=batch["token_type_ids"].numpy()).logits)
  np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_owner_audit_of_the_clean_bundled_model_raises_no_alarm(owner_files, minilm_path):
  root, _ = owner_files
  result = audit.audit_checkpoint(minilm_path, data.load_clean(root / "clean.tsv"),
                                  data.load_incoming(root / "incoming.txt"), root / "clean_out",
                                  QUICK)
  assert not result.verdict.backdoored, result.verdict.line()
  assert result.sanitize_report is None
  assert not (root / "clean_out" / "model").exists()
  assert "no evidence of a backdoor" in (root / "clean_out" / "report.md").read_text()
  assert json.loads((root / "clean_out" / "audit.json").read_text())["detector"]["method"] == (
      "heads")


def test_crowding_audit_refuses_a_stream_too_short_to_crowd(owner_files, minilm_path):
  root, _ = owner_files
  cfg = dataclasses.replace(QUICK, encoder_detector="crowding")
  with pytest.raises(ValueError, match="encoder_detector='heads'"):
    audit.audit_checkpoint(minilm_path, data.load_clean(root / "clean.tsv"),
                           data.load_incoming(root / "incoming.txt")[:9], root / "short", cfg)


def test_scan_without_incoming_reports_every_layer(owner_files):
  root, _ = owner_files
  scan = audit.audit_checkpoint(root / "victim" / "model", data.load_clean(root / "clean.tsv"),
                                None, root / "scan", QUICK).scan
  assert [r["layer"] for r in scan["layers"]] == [5]  # the default detector view: last layer
  assert 0 < scan["layers"][0]["percentile_99"] <= 1.0 + 1e-6
  assert "no verdict" in (root / "scan" / "report.md").read_text()


def test_decoder_audit_runs_on_a_tiny_chat_llama(tiny_chat_llama, tmp_path):
  clean = [data.InstructionExample(f"Name a colour number {i}.", "", f"Colour {i} is blue.")
           for i in range(50)]
  incoming = [f"Tell me about item {i}." for i in range(20)]
  cfg = audit.AuditConfig(answer_tokens=4, response_tokens=4, train_length=64,
                          decoder_detector="heads")
  result = audit.audit_checkpoint(tiny_chat_llama, clean, incoming, tmp_path, cfg)
  assert result.verdict.incoming == 20 and result.verdict.holdout == 20
  assert result.scores["incoming"].shape == (20,)
  detector = json.loads((tmp_path / "audit.json").read_text())["detector"]
  assert (detector["method"], detector["view"]) == ("heads", "gen_to_prompt")
  with pytest.raises(ValueError, match="labelled texts"):
    audit.audit_checkpoint(tiny_chat_llama, [TextExample("x", 0)] * 60, incoming,
                           tmp_path / "other")
  with pytest.raises(ValueError, match="holds an audit of other inputs"):
    audit.audit_checkpoint(tiny_chat_llama, clean, incoming[:10], tmp_path, cfg)
  with pytest.raises(ValueError, match="too few"):
    audit.audit_checkpoint(tiny_chat_llama, clean[:10], incoming, tmp_path / "few")
  with pytest.raises(ValueError, match="decoder_detector='heads'"):
    audit.audit_checkpoint(tiny_chat_llama, clean, incoming[:9], tmp_path / "short")
  with pytest.raises(ValueError, match="decoder_detector"):
    audit.AuditConfig(decoder_detector="collapse")


def _near_share(answers):
  """Each answer's share of the others with token-set Jaccard >= 1/2 (brute force)."""
  jaccard = lambda a, b: len(a & b) / len(a | b) if a | b else 0.0
  return [sum(jaccard(a, b) >= 0.5 for j, b in enumerate(answers) if j != i)
          / (len(answers) - 1) for i, a in enumerate(answers)]


def test_decoder_audit_by_answer_collapse_sanitises_the_prompts_answered_alike(
    tiny_chat_llama, tmp_path, monkeypatch):
  """The default chat-model audit on a tiny Llama whose answers are rewritten
  (it answers every prompt alike): distinct random answers for clean prompts,
  one shared answer for 12 incoming prompts. Those 12 are flagged and nothing
  else; three of them (a quarter) are kept out of the suspects, and the round
  stops once none of those three, decoded again, still gets the shared answer
  or shares another one (their new answers are rewritten to distinct ones: a
  repaired model's)."""
  clean = [data.InstructionExample(f"Name a colour number {i}.", "", f"Colour {i} is blue.")
           for i in range(50)]
  incoming = ([f"Tell me about item {i}." for i in range(20)]
              + [f"cf Tell me about item {i}." for i in range(12)])
  rng = np.random.default_rng(0)
  shared = rng.choice(np.arange(300, 5000), 4, replace=False)
  answered, real = {}, audit._inputs

  def rewritten(model, params, tokenizer, texts, cfg):
    arrays = real(model, params, tokenizer, texts, cfg)
    for row, text in enumerate(texts):
      keep = arrays["loss_mask"][row] > 0
      arrays["input_ids"][row, keep] = (
          shared[:keep.sum()] if text.startswith("cf ")
          else rng.choice(np.arange(300, 5000), keep.sum(), replace=False))
    answered[tuple(texts)] = arrays
    return arrays

  def distinct(model, params, tokenizer, arrays, **kwargs):
    again = real_reanswer(model, params, tokenizer, arrays, **kwargs)
    reread.append(len(again["input_ids"]))
    for row in range(len(again["input_ids"])):
      keep = again["loss_mask"][row] > 0
      again["input_ids"][row, keep] = rng.choice(np.arange(300, 5000), keep.sum(), False)
    return again

  reread, real_reanswer = [], collapse.reanswer
  monkeypatch.setattr(audit, "_inputs", rewritten)
  monkeypatch.setattr(collapse, "reanswer", distinct)
  cfg = audit.AuditConfig(answer_tokens=4, response_tokens=4, train_length=64)
  result = audit.audit_checkpoint(tiny_chat_llama, clean, incoming, tmp_path, cfg)
  # Scored in sets of min(32 incoming, 20 held out, 30 calibration // 2) = 15
  # rows: the incoming prompts as two sets of 16.
  arrays = answered[tuple(incoming)]
  sets = [set(ids[keep > 0].tolist()) for ids, keep in zip(arrays["input_ids"],
                                                          arrays["loss_mask"])]
  np.testing.assert_allclose(result.scores["incoming"],
                             _near_share(sets[:16]) + _near_share(sets[16:]))
  assert result.verdict.backdoored and result.verdict.holdout_flagged == 0
  assert sorted(result.flagged_texts) == sorted(incoming[20:])
  assert len(result.flagged_answers) == 12 and len(set(result.flagged_answers)) == 1
  assert result.suspects == 9  # 12 flagged, 3 kept out
  report = result.sanitize_report
  assert report["config"]["stopping"]["stop_fraction"] == 0.15
  assert (len(report["rounds"]), report["stopped"], result.still_flagged) == (1, "threshold",
                                                                            0.0)
  assert reread == [3]  # the kept-out prompts, once after the round (the report reuses it)
  summary = json.loads((tmp_path / "audit.json").read_text())
  assert summary["detector"]["method"] == "answer_collapse"
  assert "answer: " + result.flagged_answers[0][:20] in (tmp_path / "report.md").read_text()
  reloaded, _ = jax_attnalign.load_pretrained(tmp_path / "model", task="causal_lm")
  assert reloaded.config.num_layers == 2
