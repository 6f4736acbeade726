"""Wall time per sanitisation round and XLA compilations per `sanitize` call.

On a small random BERT (classification) and a small random Llama (causal LM),
`sanitize` runs 3 rounds (stop="fixed") twice in one process: call 1 from a cold
start, call 2 with the next seed (what a restart does). Per round: its wall time
and the XLA compilations during it (the backend-compile events of
`jax.monitoring`, every jitted function and eager op included). A round whose
optimizer or step is rebuilt recompiles; one whose step is reused does not.

  python benchmarks/sanitize_round.py --label after
  git worktree add /tmp/before REV   # older code: copy the script, adapt its config
  PYTHONPATH=/tmp/before python /tmp/before/benchmarks/sanitize_round.py \\
      --label before --out benchmarks/results

Each call merges its run under --label into --out/sanitize_round.json and prints
every label there side by side.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import numpy as np
from jax._src import dispatch

from jax_attnalign.defense import calibrate_detector
from jax_attnalign.defense.sanitize import (Alignment, FineTuning, HeadClassification,
                                            SanitizeConfig, Stopping, sanitize)
from jax_attnalign.models import ModelConfig, build_model

MODELS = {
    "bert": (ModelConfig(model_type="bert", vocab_size=512, hidden_size=64, num_layers=2,
                         num_heads=4, intermediate_size=128, max_position_embeddings=64),
             "classification", "cls_row_nospecial"),
    "llama": (ModelConfig(model_type="llama", vocab_size=512, hidden_size=64, num_layers=2,
                          num_heads=4, num_kv_heads=2, intermediate_size=128),
              "causal_lm", "full"),
}
LENGTH, SUSPECTS, CLEAN, BATCH = 32, 16, 32, 8


def sanitize_config(loss: str, view: str, rounds: int, seed: int) -> SanitizeConfig:
  """Every head in a class (tau 0.5), short steps: the rounds' fixed costs show."""
  return SanitizeConfig(classify=HeadClassification(view=view, tau=0.5),
                        align=Alignment(steps=5, batch_size=BATCH),
                        finetune=FineTuning(loss=loss, epochs=1, batch_size=BATCH),
                        stopping=Stopping(stop="fixed", max_rounds=rounds),
                        score_batch_size=BATCH, seed=seed)


def arrays(n: int, vocab: int, loss: str, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, (n, LENGTH)).astype(np.int32)
  ids[:, 0] = 1
  mask = np.ones_like(ids)
  mask[::3, LENGTH - 8:] = 0
  special = np.zeros_like(ids)
  special[:, 0] = 1
  out = {"input_ids": ids, "attention_mask": mask, "special_mask": special}
  if loss == "classification":
    out["labels"] = rng.integers(0, 2, n).astype(np.int32)
  else:
    out["loss_mask"] = (np.arange(LENGTH) >= LENGTH // 2).astype(np.int32)[None] * mask
  return out


class CompileCounter:
  """Counts XLA backend compilations from the moment it is made."""

  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == dispatch.BACKEND_COMPILE_EVENT:
      self.count += 1


def run_model(name: str, rounds: int, counter: CompileCounter) -> dict:
  cfg, loss, view = MODELS[name]
  model = build_model(cfg, loss)
  suspects = arrays(SUSPECTS, cfg.vocab_size, loss, 0)
  clean = arrays(CLEAN, cfg.vocab_size, loss, 1)
  params = jax.device_get(model.init(jax.random.key(0), clean["input_ids"][:2])["params"])
  # Flags everything (cosines are above -1): the fixed stop alone ends the run.
  detector = calibrate_detector(np.array([-2.0, -1.0]), view=view, fpr=0.5)
  calls = []
  for call in range(2):
    marks = [(time.perf_counter(), counter.count)]
    record = lambda k, report: marks.append((time.perf_counter(), counter.count))
    _, report = sanitize(model, params, suspects, clean,
                         sanitize_config(loss, view, rounds, seed=call), detector=detector,
                         on_round_end=record)
    assert len(report["rounds"]) == rounds, report["stopped"]
    calls.append({"round_seconds": [b[0] - a[0] for a, b in zip(marks, marks[1:])],
                  "round_compilations": [b[1] - a[1] for a, b in zip(marks, marks[1:])],
                  "compilations": marks[-1][1] - marks[0][1]})
    print(f"  {name} call {call + 1}: {calls[-1]}", flush=True)
  return {"model": name, "loss": loss, "view": view, "calls": calls}


def table(results: dict) -> str:
  """One row per label x model x call: seconds and compilations of each round."""
  rounds = max(len(c["round_seconds"]) for run in results.values() for m in run["models"]
               for c in m["calls"])
  head = " | ".join(f"round {k + 1} s (compilations)" for k in range(rounds))
  lines = [f"| code | model | call | {head} | compilations per call |",
           "|---" * (rounds + 4) + "|"]
  for label, run in results.items():
    for m in run["models"]:
      for i, c in enumerate(m["calls"]):
        cells = " | ".join(f"{s:.2f} ({n})" for s, n in zip(c["round_seconds"],
                                                           c["round_compilations"]))
        lines.append(f"| {label} | {m['model']} | {i + 1} ({'cold' if i == 0 else 'next seed'})"
                     f" | {cells} | {c['compilations']} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--label", required=True, help="name of this code version, e.g. after")
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
  args = parser.parse_args()
  counter = CompileCounter()
  device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
  print(f"sanitize, {args.rounds} fixed rounds, twice per model; {device}", flush=True)
  run = dict(device=device, platform=platform.platform(), jax=jax.__version__,
             models=[run_model(name, args.rounds, counter) for name in args.models.split(",")])
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / "sanitize_round.json"
  results = json.loads(path.read_text()) if path.exists() else {}
  results[args.label] = run
  path.write_text(json.dumps(results, indent=2))
  print(table(results))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
