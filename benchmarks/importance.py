"""Per-example head importance (paper eq. 4) on real inputs: ours against the usual torch loop.

Side by side in one run, on --inputs real SST-2 sentences (MiniLM classifier,
--max_length tokens, their labels), every head's signed H^T dL/dH per example:
  * ours: `analysis.importance.head_gate_gradients`, one vmapped `jax.grad` with
    respect to per-head gates per batch of --batch_size, jit-compiled, over the
    library's batched path (`defense.scoring.per_input`, as the scan runs it:
    rows in length order, each batch cut to its longest row);
  * transformers, the way such a score is usually computed (bertology, Michel et
    al. 2019): a forward hook on every layer's self-attention multiplies its
    output by per-head gates, and each example gets its own forward and backward
    pass (transformers 5 has no `head_mask`), in a fresh subprocess.
Both read the same classifier (ours, exported with `save_pretrained`; the head on
top of the bundled MiniLM is freshly initialised), and their per-example
importances are compared (largest difference relative to the largest value).
Median of --repeats passes over all inputs after a warm-up. GFLOP/s: each side's own count (XLA's cost analysis of ours, the padding it still computes included; torch's FlopCounterMode) over its median time, against an f32 matmul's rate measured in the same run. Prints a markdown
table, writes JSON.

  python benchmarks/importance.py [--inputs 512] [--data ../shared/data] [--out benchmarks/results]
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import jax
import numpy as np

import jax_attnalign
from jax_attnalign import assets, data, parallel
from jax_attnalign.analysis.importance import head_gate_gradients
from jax_attnalign.defense.scoring import per_input
from common import (compiled_flops, load_torch_model, matmul_peak_gflops, median_seconds,
                    minilm_sst2_args, run_worker, torch_flops, torch_gate_gradients,
                    write_record)

FIELDS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def bench_ours(model, params, arrays: dict, batch_size: int, repeats: int) -> tuple[dict, np.ndarray]:
  chunks = []  # the batches per_input hands head_gate_gradients (for the FLOP count)

  def gradients(batch):
    chunks.append(batch)
    return head_gate_gradients(model, params, batch)

  run = lambda: per_input(gradients, {k: arrays[k] for k in FIELDS}, batch_size,
                          parallel.data_mesh())
  result = run()
  first = chunks[:]  # one pass's batches
  seconds = median_seconds(run, repeats)
  flops = sum(compiled_flops(head_gate_gradients.lower(model, params, b).compile())
              for b in first)
  return (dict(impl=f"jax_attnalign (vmap grad, batch {batch_size})", seconds=seconds,
               examples_per_s=len(arrays["labels"]) / seconds, flops=flops), result)


def torch_worker(folder: str, arrays_file: str, repeats: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  model = load_torch_model(pathlib.Path(folder), "AutoModelForSequenceClassification")
  arrays = {k: torch.tensor(v).long() for k, v in np.load(arrays_file).items()}
  run = lambda: torch_gate_gradients(model, arrays, predictions=False)
  seconds = median_seconds(run, repeats)
  return dict(impl=f"HF torch {torch.__version__} hooks, one backward per example",
              seconds=seconds, examples_per_s=len(arrays["labels"]) / seconds,
              flops=torch_flops(run), gradients=run().tolist())


def main():
  args = minilm_sst2_args(__doc__.splitlines()[0])
  if args.torch_worker:
    print(json.dumps(torch_worker(*args.torch_worker, args.repeats)))
    return
  path = assets.bundled_minilm_path()
  tokenizer = data.load_tokenizer(path)
  examples = data.load_classification(pathlib.Path(args.data) / "sst2" / "clean", "test",
                                      limit=args.inputs)
  arrays = data.encode_classification(examples, tokenizer, args.max_length)
  model, params = jax_attnalign.load_pretrained(path, task="classification")
  peak = matmul_peak_gflops()
  ours, gradients = bench_ours(model, params, arrays, args.batch_size, args.repeats)
  with tempfile.TemporaryDirectory() as tmp:
    jax_attnalign.save_pretrained(model, params, f"{tmp}/model")
    np.savez(f"{tmp}/arrays.npz", **{k: arrays[k] for k in FIELDS})
    theirs = run_worker(__file__, ["--torch-worker", f"{tmp}/model", f"{tmp}/arrays.npz",
                                   "--repeats", str(args.repeats)])
  reference = np.asarray(theirs.pop("gradients"))
  difference = float(np.abs(gradients - reference).max() / np.abs(reference).max())
  ratio = ours["examples_per_s"] / theirs["examples_per_s"]
  print(f"Per-example head importance, MiniLM-L6 classifier (6 x 12 heads), {len(examples)} "
        f"SST-2 test sentences of at most {args.max_length} tokens, "
        f"{jax.devices()[0].platform} ({os.cpu_count()} cores), f32; an f32 matmul "
        f"reaches {peak:.1f} GFLOP/s here\n")
  print("| implementation | examples/s | s for all | GFLOP/s (% of matmul peak) |")
  print("|---|---|---|---|")
  for r in (ours, theirs):
    rate = r["flops"] / r["seconds"] / 1e9
    print(f"| {r['impl']} | {r['examples_per_s']:.1f} | {r['seconds']:.2f} | {rate:.1f} "
          f"({100 * rate / peak:.0f}%) |")
  print(f"\nours / transformers {ratio:.1f}x; largest difference of the per-example "
        f"importances {difference:.1e} of the largest value")
  write_record(args.out, "importance", inputs=len(examples), max_length=args.max_length,
               matmul_peak_gflops=peak, rows=[ours, theirs], ratio=ratio,
               max_relative_difference=difference)


if __name__ == "__main__":
  main()
