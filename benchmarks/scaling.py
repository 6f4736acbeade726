"""How the head-similarity scan's cost grows: sequence length, layers, inputs, heads.

On the bundled SmolLM2-135M (30 layers x 9 heads, GQA 3:1, f32), one sequence,
view --view (generation-to-prompt by default: the prompt is the first half):
  length  T = 128, 256, ..., --max_length: each path's compiled activation
          memory (XLA's memory_analysis: outputs + temporaries, nothing
          allocated) for streaming (`streaming_head_similarity`) and
          materialised maps (`attention_maps` then `head_similarity`), and the
          time of each run whose footprint is under --run_gib
  layers  the first 4, 8, 16 and all 30 layers at T = --layers_length: compiled
          activation memory of both paths (nothing runs)
  inputs  n = 8 ... 128 inputs of 128 tokens through `defense.scores_of`
          (batches of 8): time
  heads   MiniLM (6 x 12, its [CLS]-row view) against SmolLM2 (30 x 9) at 128
          tokens: streaming time per input
Slopes are least-squares fits of log(cost) on log(size); the table says them in
words and a log-log plot shows the length sweep. Writes JSON and the plot.

  python benchmarks/scaling.py [--max_length 2048] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np
from matplotlib.figure import Figure

import jax_attnalign
from jax_attnalign import assets
from jax_attnalign.defense import scores_of
from jax_attnalign.models import build_model
from streaming_memory import GIB, footprint, inputs, path_fns

PATHS = ("streaming", "materialised")


def slope(sizes, costs) -> float:
  """The exponent k of cost ~ size^k (least squares in log-log)."""
  return float(np.polyfit(np.log(sizes), np.log(costs), 1)[0])


def sweep_length(model, params, view: str, lengths: list[int], run_gib: float) -> list[dict]:
  fns, rows = path_fns(model, view), []
  for length in lengths:
    args = (params, *inputs(length, model.config.vocab_size))
    for name in PATHS:
      compiled = jax.jit(fns[name]).lower(*args).compile()
      row = dict(length=length, path=name, **footprint(compiled))
      if row["activation_bytes"] < run_gib * GIB:
        jax.block_until_ready(compiled(*args))  # warm-up
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        row["seconds"] = time.perf_counter() - start
      rows.append(row)
      print(f"  T={length} {name}: {row['activation_bytes'] / GIB:.3f} GiB, "
            f"{row.get('seconds', float('nan')):.2f} s", flush=True)
  return rows


def sweep_layers(model, view: str, layer_counts: list[int], length: int) -> list[dict]:
  rows = []
  for layers in layer_counts:
    sub = build_model(model.config.replace(num_layers=layers), task="base")
    args = inputs(length, sub.config.vocab_size)
    params = jax.eval_shape(sub.init, jax.random.key(0), args[0])["params"]
    for name in PATHS:
      compiled = jax.jit(path_fns(sub, view)[name]).lower(params, *args).compile()
      rows.append(dict(layers=layers, path=name, **footprint(compiled)))
  return rows


def sweep_inputs(model, params, view: str, counts: list[int]) -> list[dict]:
  rng, rows = np.random.default_rng(0), []
  for n in counts:
    ids = rng.integers(3, model.config.vocab_size, (n, 128)).astype(np.int32)
    arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids),
              "prompt_lengths": np.full(n, 64, np.int32)}
    scan = lambda: scores_of(model, params, arrays, view, "percentile", batch_size=8)
    scan()  # compiles
    start = time.perf_counter()
    scan()
    rows.append(dict(inputs=n, seconds=time.perf_counter() - start))
  return rows


def per_input_seconds(path, task: str, view: str) -> dict:
  model, params = jax_attnalign.load_pretrained(path, task=task)
  cfg = model.config
  fn = jax.jit(path_fns(model, view)["streaming"])
  ids, mask, special, lengths = inputs(128, cfg.vocab_size)
  args = (params, ids, mask, special, lengths if cfg.is_decoder else None)
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return dict(model=f"{cfg.num_layers} x {cfg.num_heads}", heads=cfg.num_layers * cfg.num_heads,
              view=view, seconds=time.perf_counter() - start)


def plot(rows: list[dict], path: pathlib.Path) -> None:
  fig = Figure(figsize=(9, 3.6))
  for k, (key, label) in enumerate((("activation_bytes", "activation memory (GiB)"),
                                    ("seconds", "time per sequence (s)"))):
    ax = fig.add_subplot(1, 2, k + 1)
    for name in PATHS:
      points = [(r["length"], r[key] / (GIB if k == 0 else 1)) for r in rows
                if r["path"] == name and key in r]
      if points:
        ax.loglog(*zip(*points), marker="o", label=name, base=2)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(label)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--max_length", type=int, default=2048)
  parser.add_argument("--layers_length", type=int, default=512)
  parser.add_argument("--max_inputs", type=int, default=128)
  parser.add_argument("--run_gib", type=float, default=6.0)
  parser.add_argument("--view", default="gen_to_prompt")
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
  args = parser.parse_args()
  path = assets.bundled_smollm2_path()
  model, params = jax_attnalign.load_pretrained(path, task="base")
  lengths = [2 ** k for k in range(7, int(np.log2(args.max_length)) + 1)]
  print(f"SmolLM2-135M, view {args.view!r}, {jax.devices()[0].platform} "
        f"({os.cpu_count()} cores), f32")
  result = dict(platform=platform.platform(), view=args.view,
                length=sweep_length(model, params, args.view, lengths, args.run_gib),
                layers=sweep_layers(model, args.view, [4, 8, 16, model.config.num_layers],
                                    args.layers_length),
                inputs=sweep_inputs(model, params, args.view,
                                    [8 * 2 ** k for k in range(int(np.log2(args.max_inputs / 8))
                                                               + 1)]),
                heads=[per_input_seconds(assets.bundled_minilm_path(), "base", "cls_row"),
                       per_input_seconds(path, "base", args.view)])
  slopes = {}
  for name in PATHS:
    rows = [r for r in result["length"] if r["path"] == name]
    slopes[f"{name} memory vs length"] = slope([r["length"] for r in rows],
                                               [r["activation_bytes"] for r in rows])
    timed = [r for r in rows if "seconds" in r]
    if len(timed) > 1:
      slopes[f"{name} time vs length"] = slope([r["length"] for r in timed],
                                               [r["seconds"] for r in timed])
    rows = [r for r in result["layers"] if r["path"] == name]
    slopes[f"{name} memory vs layers"] = slope([r["layers"] for r in rows],
                                               [r["activation_bytes"] for r in rows])
  slopes["scan time vs inputs"] = slope([r["inputs"] for r in result["inputs"]],
                                        [r["seconds"] for r in result["inputs"]])
  result["slopes"] = slopes
  print("\n| length | path | activation memory (GiB) | time (s) |\n|---|---|---|---|")
  for r in result["length"]:
    secs = f"{r['seconds']:.2f}" if "seconds" in r else "not run"
    print(f"| {r['length']} | {r['path']} | {r['activation_bytes'] / GIB:.3f} | {secs} |")
  print("\n| layers | path | activation memory (GiB) |\n|---|---|---|")
  for r in result["layers"]:
    print(f"| {r['layers']} | {r['path']} | {r['activation_bytes'] / GIB:.3f} |")
  print("\n| inputs | scan time (s) |\n|---|---|")
  for r in result["inputs"]:
    print(f"| {r['inputs']} | {r['seconds']:.2f} |")
  print("\n| model (layers x heads) | view | streaming s / input |\n|---|---|---|")
  for r in result["heads"]:
    print(f"| {r['model']} | {r['view']} | {r['seconds']:.3f} |")
  print("\ncost ~ size^k: " + "; ".join(f"{k} k = {v:.2f}" for k, v in slopes.items()))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "scaling.json").write_text(json.dumps(result, indent=2))
  plot(result["length"], out / "scaling.png")
  print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")


if __name__ == "__main__":
  main()
