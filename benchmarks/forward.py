"""Throughput and peak memory of an attention-capturing forward pass on MiniLM.

Side by side in one run, on the same random token batch (32 x 64 by default):
  * ours: jit-compiled Flax forward, capture on and capture off;
  * HF torch eager with `output_attentions=True` (and without).
Peak memory of our forward is XLA's compiled buffer footprint (arguments +
outputs + temporaries, `compiled.memory_analysis()`); for torch it is the growth
of peak RSS over the forward passes in a fresh subprocess (coarse: allocator
caching and page granularity included). Prints a markdown table, writes JSON.

  python benchmarks/forward.py [--batch 32] [--length 64] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_attnalign
from jax_attnalign.assets import bundled_minilm_path


def _time(fn, repeats: int) -> float:
  fn()  # warm-up (and compilation)
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_ours(path, ids, mask, capture: bool, repeats: int) -> dict:
  model, params = jax_attnalign.load_pretrained(path)

  def forward(p, i, m):
    if not capture:
      return model.apply({"params": p}, i, m).last_hidden_state
    out, state = model.apply({"params": p}, i, m, capture_attention=True,
                             mutable=["intermediates"])
    return out.last_hidden_state, jax_attnalign.attention_maps(state)

  compiled = jax.jit(forward).lower(params, ids, mask).compile()
  mem = compiled.memory_analysis()
  peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
  seconds = _time(lambda: jax.block_until_ready(compiled(params, ids, mask)), repeats)
  return dict(impl="jax_attnalign (jit)", capture=capture, seconds=seconds,
              seq_per_s=ids.shape[0] / seconds, peak_bytes=int(peak),
              output_bytes=int(mem.output_size_in_bytes),
              temp_bytes=int(mem.temp_size_in_bytes), memory="XLA compiled footprint")


def bench_torch(path, ids, mask, capture: bool, repeats: int) -> dict:
  """Runs in a fresh subprocess so that its peak RSS is its own."""
  with tempfile.TemporaryDirectory() as tmp:
    np.savez(f"{tmp}/batch.npz", ids=np.asarray(ids), mask=np.asarray(mask))
    cmd = [sys.executable, __file__, "--torch-worker", f"{tmp}/batch.npz",
           "--repeats", str(repeats)] + (["--capture"] if capture else [])
    return json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                     text=True).stdout.splitlines()[-1])


def torch_worker(path, batch_file: str, capture: bool, repeats: int) -> dict:
  import torch
  import transformers
  model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
  batch = np.load(batch_file)
  ids, mask = batch["ids"], batch["mask"]
  ids_t, mask_t = torch.tensor(ids).long(), torch.tensor(mask).long()
  before = _peak_rss_bytes()

  def run():
    with torch.no_grad():
      return model(input_ids=ids_t, attention_mask=mask_t, output_attentions=capture)

  seconds = _time(run, repeats)
  return dict(impl=f"HF torch {torch.__version__} eager", capture=capture,
              seconds=seconds, seq_per_s=ids.shape[0] / seconds,
              peak_bytes=max(_peak_rss_bytes() - before, 0),
              memory="peak RSS growth (coarse)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
  parser.add_argument("--torch-worker", help=argparse.SUPPRESS)
  parser.add_argument("--capture", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  path = bundled_minilm_path()
  if args.torch_worker:
    print(json.dumps(torch_worker(path, args.torch_worker, args.capture, args.repeats)))
    return
  rng = np.random.RandomState(0)
  ids = rng.randint(1000, 30000, (args.batch, args.length)).astype(np.int32)
  ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
  mask = np.ones_like(ids)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  rows = []
  for capture in (True, False):
    rows.append(bench_ours(path, ids, mask, capture, args.repeats))
    rows.append(bench_torch(path, ids, mask, capture, args.repeats))
  ours_on = rows[0]["seq_per_s"]
  torch_on = rows[1]["seq_per_s"]
  print(f"MiniLM-L6 forward, batch {args.batch} x {args.length} tokens, "
        f"{jax.devices()[0].platform} ({os.cpu_count()} cores)\n")
  print("| implementation | attentions | seq/s | ms/batch | peak memory (MiB) | how measured |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['impl']} | {'on' if r['capture'] else 'off'} | {r['seq_per_s']:.1f} "
          f"| {1e3 * r['seconds']:.1f} | {r['peak_bytes'] / 2**20:.1f} | {r['memory']} |")
  print(f"\nthroughput ratio ours / HF with attentions on: {ours_on / torch_on:.2f}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  result = dict(batch=args.batch, length=args.length, platform=platform.platform(),
                devices=str(jax.devices()), rows=rows, ratio_capture_on=ours_on / torch_on)
  (out / "forward.json").write_text(json.dumps(result, indent=2))
  print(f"wrote {out / 'forward.json'}")


if __name__ == "__main__":
  main()
