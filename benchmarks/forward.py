"""Throughput and peak memory of an attention-capturing forward pass on the bundled models.

Side by side in one run, on the same random token batch per model (MiniLM
32 x 64, SmolLM2-135M 8 x 128 by default; the base model, no LM head):
  * ours: jit-compiled Flax forward, capture on and capture off;
  * HF torch eager with `output_attentions=True` (and without), SmolLM2 loaded
    by transformers from the same GGUF file.
Memory beyond the weights: for ours XLA's compiled outputs + temporaries
(`compiled.memory_analysis()`; the weights, its arguments, are in the JSON); for
torch the growth of peak RSS over the forward passes in a fresh subprocess, the
peak reset after loading (coarse: allocator caching and page granularity included). Prints a markdown table, writes JSON. GFLOP/s: each side's own count (XLA's cost analysis of ours, padding included; torch's FlopCounterMode) over its median time, against an f32 matmul's rate measured in the same run.

  python benchmarks/forward.py [--models minilm,smollm2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile

import jax
import numpy as np

import jax_attnalign
from jax_attnalign import assets
from jax_attnalign.models import PATTERNS, run_with_hooks
from common import (compiled_flops, load_torch_model, matmul_peak_gflops, median_seconds,
                    reset_peak_rss, rss_bytes, run_worker, torch_flops, write_record)

# name: (checkpoint path, default batch, default length, a title)
MODELS = {
    "minilm": (assets.bundled_minilm_path, 32, 64, "MiniLM-L6 (6 x 12 heads)"),
    "smollm2": (assets.bundled_smollm2_path, 8, 128,
                "SmolLM2-135M (30 x 9 heads, GQA 3:1)"),
}


def bench_ours(path, ids, mask, capture: bool, repeats: int) -> dict:
  model, params = jax_attnalign.load_pretrained(path, task="base")

  def forward(p, i, m):
    if not capture:
      return model.apply({"params": p}, i, m).last_hidden_state
    out, captured = run_with_hooks(model, p, {"input_ids": i, "attention_mask": m},
                                   capture=PATTERNS)
    return out.last_hidden_state, jax_attnalign.attention_maps(captured)

  compiled = jax.jit(forward).lower(params, ids, mask).compile()
  mem = compiled.memory_analysis()
  seconds = median_seconds(lambda: jax.block_until_ready(compiled(params, ids, mask)),
                           repeats)
  return dict(impl="jax_attnalign (jit)", capture=capture, seconds=seconds,
              flops=compiled_flops(compiled),
              seq_per_s=ids.shape[0] / seconds,
              peak_bytes=int(mem.output_size_in_bytes + mem.temp_size_in_bytes),
              argument_bytes=int(mem.argument_size_in_bytes),
              memory="XLA outputs + temporaries")


def bench_torch(name: str, ids, mask, capture: bool, repeats: int) -> dict:
  """Runs in a fresh subprocess so that its peak RSS is its own."""
  with tempfile.TemporaryDirectory() as tmp:
    np.savez(f"{tmp}/batch.npz", ids=np.asarray(ids), mask=np.asarray(mask))
    return run_worker(__file__, ["--torch-worker", f"{tmp}/batch.npz", "--models", name,
                                 "--repeats", str(repeats)] + (["--capture"] if capture else []))


def torch_worker(path: pathlib.Path, batch_file: str, capture: bool, repeats: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  model = load_torch_model(path)
  batch = np.load(batch_file)
  ids, mask = batch["ids"], batch["mask"]
  ids_t, mask_t = torch.tensor(ids).long(), torch.tensor(mask).long()
  reset_peak_rss()
  before = rss_bytes("VmRSS")

  def run():
    with torch.no_grad():
      return model(input_ids=ids_t, attention_mask=mask_t, output_attentions=capture)

  seconds = median_seconds(run, repeats)
  return dict(impl=f"HF torch {torch.__version__} eager", capture=capture,
              seconds=seconds, seq_per_s=ids.shape[0] / seconds, flops=torch_flops(run),
              peak_bytes=max(rss_bytes("VmHWM") - before, 0),
              memory="peak RSS growth (coarse)")


def bench_model(name: str, args) -> dict:
  path_fn, batch, length, title = MODELS[name]
  path = path_fn()
  model_config = jax_attnalign.load_pretrained(path, task="base")[0].config
  rng = np.random.RandomState(0)
  ids = rng.randint(1000, model_config.vocab_size - 1000, (batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  rows = []
  for capture in (True, False):
    rows.append(bench_ours(path, ids, mask, capture, args.repeats))
    rows.append(bench_torch(name, ids, mask, capture, args.repeats))
  return dict(model=name, title=title, batch=batch, length=length, rows=rows,
              ratio_capture_on=rows[0]["seq_per_s"] / rows[1]["seq_per_s"],
              ratio_capture_off=rows[2]["seq_per_s"] / rows[3]["seq_per_s"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
  parser.add_argument("--torch-worker", help=argparse.SUPPRESS)
  parser.add_argument("--capture", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  names = args.models.split(",")
  unknown = sorted(set(names) - set(MODELS))
  if unknown:
    parser.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
  if args.torch_worker:
    print(json.dumps(torch_worker(MODELS[names[0]][0](), args.torch_worker, args.capture,
                                  args.repeats)))
    return
  peak = matmul_peak_gflops()
  results = [bench_model(name, args) for name in names]
  print(f"Attention-capturing forward, {jax.devices()[0].platform} "
        f"({os.cpu_count()} cores), f32; an f32 matmul reaches {peak:.1f} GFLOP/s here\n")
  print("| model | batch x tokens | implementation | attentions | seq/s | ms/batch "
        "| GFLOP/s (% of matmul peak) | memory beyond weights (MiB) | how measured |")
  print("|---|---|---|---|---|---|---|---|---|")
  for result in results:
    for r in result["rows"]:
      rate = r["flops"] / r["seconds"] / 1e9
      print(f"| {result['title']} | {result['batch']} x {result['length']} | {r['impl']} "
            f"| {'on' if r['capture'] else 'off'} | {r['seq_per_s']:.1f} "
            f"| {1e3 * r['seconds']:.1f} | {rate:.1f} ({100 * rate / peak:.0f}%) "
            f"| {r['peak_bytes'] / 2**20:.1f} | {r['memory']} |")
  print()
  for result in results:
    print(f"{result['title']}: throughput ours / HF, attentions on "
          f"{result['ratio_capture_on']:.2f}, off {result['ratio_capture_off']:.2f}")
  write_record(args.out, "forward", matmul_peak_gflops=peak, models=results)


if __name__ == "__main__":
  main()
