"""The owner's audit (`jax_attnalign.audit`) on classifiers whose triggers are known:
what its verdict says and what its sanitised model leaves.

  record = audit_victim("sst2/badnets_seed0", setup, "crowding", "mixed", workdir)

The owner holds the defense harness's defender rows as its clean rows
(`pipeline.defense_examples`: the clean fine-tuning and calibration rows, with
their labels) and receives one of two incoming streams, as texts only:
  * 'mixed': the harness's monitored stream (its clean and triggered test inputs);
  * 'clean': as many clean test inputs (the stream's clean ones, then the first
    held-out clean ones), where a positive verdict is a false alarm.
The stream's truth then scores the audit's flags and suspects, and a sanitised
model is measured on the harness's held-out sets (CA, ASR) beside the victim.
A clean model audited with a backdoored victim's setup receives that attack's
triggered inputs without having learnt the trigger: any alarm there is false too.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import time

import numpy as np

import jax_attnalign
from jax_attnalign import audit, data
from jax_attnalign.data.files import write_json
from jax_attnalign.harness import pipeline
from jax_attnalign.harness.pipeline import DefenseSetup

STREAMS = ("mixed", "clean")


def owner_stream(rows: dict[str, list], stream: str) -> tuple[list[str], np.ndarray]:
  """(incoming texts, which are triggered) of `stream` from `defense_examples` rows."""
  if stream not in STREAMS:
    raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}.")
  if stream == "mixed":
    pool = rows["stream"]
  else:
    clean = [e for e in rows["stream"] if not e.poisoned]
    pool = clean + rows["held_clean"][:len(rows["stream"]) - len(clean)]
  return [e.text for e in pool], np.array([bool(e.poisoned) for e in pool])


def run_folder(name: str, detector: str, stream: str) -> pathlib.Path:
  """Where a run's record lives under the workdir: the run name with every run of
  other characters than letters, digits, '_' and '/' made one '_', then the
  detector and the stream ('sst2/clean_seed0 (badnets stream)' ->
  sst2/clean_seed0_badnets_stream/heads/mixed)."""
  return pathlib.Path(re.sub(r"[^\w/]+", "_", name).strip("_"), detector, stream)


def audit_victim(name: str, setup: DefenseSetup, detector: str, stream: str,
                 workdir: str | pathlib.Path, cfg: audit.AuditConfig = audit.AuditConfig(),
                 *, clean_model: bool = False) -> dict:
  """Runs the owner's audit of `setup.victim` with `detector` ('crowding' or
  'heads') on `stream` (`clean_model`: the model has no backdoor, so any alarm is
  false); returns (and writes workdir/record.json) its verdict, the
  flags' true- and false-positive rates, the suspects' triggered share and, when
  it sanitised, CA and ASR on the held-out sets before and after. A finished
  record is read back; an interrupted sanitisation resumes (workdir/audit)."""
  workdir = pathlib.Path(workdir)
  if (workdir / "record.json").exists():
    return json.loads((workdir / "record.json").read_text())
  rows = pipeline.defense_examples(setup)
  incoming, truth = owner_stream(rows, stream)
  cfg = dataclasses.replace(cfg, encoder_detector=detector, max_length=setup.max_length)
  start = time.perf_counter()
  result = audit.audit_checkpoint(setup.victim, rows["clean_train"] + rows["calibration"],
                                  incoming, workdir / "audit", cfg)
  triggered = dict(zip(incoming, truth))
  flagged = np.isin(incoming, result.flagged_texts)
  v = result.verdict
  record = {"name": name, "victim": setup.victim, "attack": setup.attack, "dataset": setup.dataset,
            "seed": setup.seed, "clean_model": clean_model, "detector": detector,
            "stream": stream,
            "backdoored": v.backdoored, "p_value": v.p_value, "incoming": v.incoming,
            "flagged": v.flagged, "holdout": v.holdout, "holdout_flagged": v.holdout_flagged,
            "true_positive_rate": float(flagged[truth].mean()) if truth.any() else None,
            "false_positive_rate": float(flagged[~truth].mean()),
            "suspects": result.suspects,
            "suspects_triggered": int(sum(triggered[t] for t in
                                          result.flagged_texts[:result.suspects]))}
  if result.sanitize_report is not None:
    folder = workdir / "audit" / "model"
    tokenizer = data.load_tokenizer(folder)
    sets = pipeline.defense_data(setup, tokenizer, rows)
    for when, path in (("before", setup.victim), ("after", folder)):
      model, params = jax_attnalign.load_pretrained(path, task="classification")
      record[when] = pipeline.evaluate(model, params, sets, setup.target)
    record.update(rounds=len(result.sanitize_report["rounds"]),
                  stopped=result.sanitize_report["stopped"])
  record["wall_s"] = time.perf_counter() - start
  write_json(workdir / "record.json", record)
  return record


def _percent(value) -> str:
  return "—" if value is None else f"{100 * value:.1f}"


def owner_table(records: list[dict]) -> str:
  """Markdown: one row per victim, detector and stream."""
  lines = ["| victim | detector | stream | verdict (p) | flagged / incoming (held-out clean "
           "flagged) | TPR / FPR (%) | suspects (triggered) | CA / ASR before -> after (%) |",
           "|---|---|---|---|---|---|---|---|"]
  for r in records:
    after = (f"{_percent(r['before']['ca'])} / {_percent(r['before']['asr'])} -> "
             f"{_percent(r['after']['ca'])} / {_percent(r['after']['asr'])}"
             if "after" in r else "not sanitised")
    verdict = "backdoor" if r["backdoored"] else "none"
    lines.append(
        f"| {r['name']} | {r['detector']} | {r['stream']} | {verdict} ({r['p_value']:.1g}) | "
        f"{r['flagged']} / {r['incoming']} ({r['holdout_flagged']} of {r['holdout']}) | "
        f"{_percent(r['true_positive_rate'])} / {_percent(r['false_positive_rate'])} | "
        f"{r['suspects']} ({r['suspects_triggered']}) | {after} |")
  return "\n".join(lines)
