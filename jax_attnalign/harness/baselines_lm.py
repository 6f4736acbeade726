"""The generation baselines of Table 2(b) on an LM victim, under the defense harness.

  result = defend_lm_with_cleangen("runs/lm_gen/refusal_vpi_seed2", LMDefenseSetup(seed=2),
                                   CleanGenConfig(), workdir)

Each is measured on the same held-out prompts as `pipeline_lm.defend_lm_victim`
(the same seeded split of the victim's test prompts), so its row sits beside
ours in experiments.defend_lm's table. What each defender holds differs from
ours (no suspects, no monitored stream):
  * CleanGen works at decoding time and needs a clean reference model: the
    checkpoint the victim was fine-tuned from (the bundled SmolLM2-135M-Instruct
    unless the victim's config names another), as the paper uses the
    un-fine-tuned target LLM. Nothing is retrained; every answer costs a
    reference forward per `k` proposed tokens.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np

import jax_attnalign
from jax_attnalign.assets import bundled_smollm2_path
from jax_attnalign.baselines import CleanGenConfig, cleangen_responses
from jax_attnalign.harness.pipeline import store_defense_result
from jax_attnalign.harness.pipeline_lm import LMDefenseSetup, load_lm_victim, stream_and_held
from jax_attnalign.harness.victims_lm import evaluate_lm_victim


def defend_lm_with_cleangen(victim_dir: str | pathlib.Path, setup: LMDefenseSetup,
                            config: CleanGenConfig,
                            workdir: str | pathlib.Path | None = None) -> dict:
  """The victim's held-out metrics with plain greedy decoding ('before') and with
  CleanGen decoding against the victim's pretrained checkpoint ('after'), and the
  share of generated tokens CleanGen replaced. Writes workdir/result.json (no
  checkpoint: the weights are unchanged); a finished run's result is returned."""
  workdir = pathlib.Path(workdir) if workdir else None
  if workdir is not None and (workdir / "result.json").exists():
    return json.loads((workdir / "result.json").read_text())
  model, params, tokenizer, cfg = load_lm_victim(victim_dir)
  _, reference = jax_attnalign.load_pretrained(cfg.model or str(bundled_smollm2_path()),
                                               task="causal_lm")
  held = {name: examples for name, (_, examples) in stream_and_held(cfg, setup).items()}
  evaluate = lambda decode=None: {k: v for k, v in evaluate_lm_victim(
      model, params, tokenizer, held, cfg, decode).items() if k != "examples"}
  before = evaluate()
  reports = []

  def decode(prompts, max_new_tokens):
    texts, report = cleangen_responses(model, params, reference, tokenizer, prompts, config,
                                       max_new_tokens=max_new_tokens)
    reports.append(report)
    return texts

  start = time.perf_counter()
  after = evaluate(decode)
  replaced = sum(int(np.sum(r["replaced"])) for r in reports)
  generated = sum(int(np.sum(r["generated"])) for r in reports)
  result = {"victim": str(victim_dir), "setup": dataclasses.asdict(setup), "before": before,
            "after": after, "detection": None,
            "report": {"rounds": [], "cleangen": dataclasses.asdict(config),
                       "replacement_rate": replaced / max(generated, 1),
                       "decode_seconds": time.perf_counter() - start}}
  return store_defense_result(result, workdir, model, params, tokenizer, save_model=False)
