"""Greedy decoding with the KV cache on the bundled SmolLM2-135M: ours against transformers.

Side by side in one run, on the same random prompts (--prompt_length tokens), at
batch 1 and 8, exactly --new_tokens new tokens a row (EOS disabled on both sides,
so both do the same work):
  * ours: `jax_attnalign.models.generation.generate` (a jitted prefill, then the
    decoding loop on the device, one jitted `lax.while_loop`);
  * transformers' `generate` (greedy, KV cache, eager attention, f32) in a fresh
    subprocess, SmolLM2 loaded by transformers from the same GGUF file.
The two greedy outputs are compared token by token (rows equal in full; random
prompts leave near-ties rare but possible). Median of --repeats calls after a
warm-up (ours compiles there). A decoding step reads every weight once, so the
machine's read bandwidth (`common.read_bandwidth_gbs`, same run) over the f32
weight bytes bounds the steps per second: the table's last column is that bound
(tokens/s at the batch) and the share of it reached. The matmul floor is the
other bound: the step's weight matmuls alone at the batch (the activations [batch,
in] times every kernel, the tied embedding as the LM head; `matmul_floor_seconds`),
jitted, same run; ours' share of it says how much of a step is anything else.
Prints a markdown table, writes JSON.

  python benchmarks/generate.py [--batches 1,8] [--new_tokens 128] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import jax_attnalign
from jax_attnalign import assets
from jax_attnalign.models.generation import generate
from common import load_torch_model, median_seconds, read_bandwidth_gbs, run_worker, write_record


def bench_ours(model, params, ids: np.ndarray, new_tokens: int, repeats: int) -> dict:
  run = lambda: jax.block_until_ready(generate(model, params, ids, np.ones_like(ids),
                                               max_new_tokens=new_tokens, eos_token_id=()))
  seconds = median_seconds(run, repeats)
  return dict(impl="jax_attnalign (jit prefill, device loop)", seconds=seconds,
              tokens_per_s=ids.shape[0] * new_tokens / seconds,
              tokens=np.asarray(run().tokens).tolist())


def torch_worker(batch_file: str, new_tokens: int, repeats: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  model = load_torch_model(assets.bundled_smollm2_path(), "AutoModelForCausalLM")
  model.generation_config.eos_token_id = None  # as ours: no stop, no EOS masking
  ids = torch.tensor(np.load(batch_file)["ids"]).long()

  def run():
    with torch.no_grad():
      return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                            max_new_tokens=new_tokens, do_sample=False, use_cache=True,
                            pad_token_id=0)

  seconds = median_seconds(run, repeats)
  return dict(impl=f"HF torch {torch.__version__} generate", seconds=seconds,
              tokens_per_s=ids.shape[0] * new_tokens / seconds,
              tokens=run()[:, ids.shape[1]:].tolist())


def matmul_floor_seconds(params, batch: int, repeats: int = 10) -> float:
  """Seconds of one jitted call doing only a decoding step's weight matmuls at `batch`
  rows: ones [batch, in] times every kernel (reshaped [in, out]; the attention
  output's [heads, head_dim, hidden] to [heads x head_dim, hidden]) and times the
  token embedding transposed (SmolLM2 ties it as the LM head), outputs summed."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  weights = []
  for path, w in flat:
    name = jax.tree_util.keystr(path)
    if name.endswith("['embedding']"):
      weights.append(w.T)
    elif name.endswith("['kernel']"):
      weights.append(w.reshape(-1, w.shape[-1]) if "['out']" in name else w.reshape(w.shape[0], -1))
  widths = {w.shape[0] for w in weights}
  rows = {d: jnp.ones((batch, d), jnp.float32) for d in widths}
  step = jax.jit(lambda rows, weights: sum(jnp.sum(rows[w.shape[0]] @ w) for w in weights))
  return median_seconds(lambda: step(rows, weights).block_until_ready(), repeats)


def bench_batch(model, params, batch: int, args) -> dict:
  rng = np.random.RandomState(batch)
  ids = rng.randint(1000, model.config.vocab_size - 1000,
                    (batch, args.prompt_length)).astype(np.int32)
  ours = bench_ours(model, params, ids, args.new_tokens, args.repeats)
  with tempfile.TemporaryDirectory() as tmp:
    np.savez(f"{tmp}/batch.npz", ids=ids)
    theirs = run_worker(__file__, ["--torch-worker", f"{tmp}/batch.npz",
                                   "--new_tokens", str(args.new_tokens),
                                   "--repeats", str(args.repeats)])
  same = [a == b for a, b in zip(ours.pop("tokens"), theirs.pop("tokens"))]
  return dict(batch=batch, rows=[ours, theirs], rows_equal=float(np.mean(same)),
              ratio=ours["tokens_per_s"] / theirs["tokens_per_s"],
              matmul_floor_tokens_per_s=batch / matmul_floor_seconds(params, batch))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--prompt_length", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
  parser.add_argument("--torch-worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.torch_worker:
    print(json.dumps(torch_worker(args.torch_worker, args.new_tokens, args.repeats)))
    return
  model, params = jax_attnalign.load_pretrained(assets.bundled_smollm2_path(),
                                                task="causal_lm")
  results = [bench_batch(model, params, int(b), args) for b in args.batches.split(",")]
  bandwidth = read_bandwidth_gbs()
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  print(f"Greedy decoding, SmolLM2-135M, {args.prompt_length}-token prompts, "
        f"{args.new_tokens} new tokens, {jax.devices()[0].platform} ({os.cpu_count()} cores), "
        f"f32; read bandwidth {bandwidth:.1f} GB/s, weights {weight_bytes / 1e9:.2f} GB\n")
  print("| batch | implementation | tokens/s | s/call | rows equal to the other's "
        "| bandwidth bound, tokens/s (share reached) "
        "| weight matmuls alone, tokens/s (share reached) |")
  print("|---|---|---|---|---|---|---|")
  for result in results:
    result["bandwidth_bound_tokens_per_s"] = result["batch"] * bandwidth * 1e9 / weight_bytes
    for r in result["rows"]:
      print(f"| {result['batch']} | {r['impl']} | {r['tokens_per_s']:.1f} | "
            f"{r['seconds']:.2f} | {result['rows_equal']:.2f} | "
            f"{result['bandwidth_bound_tokens_per_s']:.1f} "
            f"({r['tokens_per_s'] / result['bandwidth_bound_tokens_per_s']:.0%}) | "
            f"{result['matmul_floor_tokens_per_s']:.1f} "
            f"({r['tokens_per_s'] / result['matmul_floor_tokens_per_s']:.0%}) |")
  print()
  for result in results:
    print(f"batch {result['batch']}: tokens/s ours / transformers {result['ratio']:.2f}")
  write_record(args.out, "generate", prompt_length=args.prompt_length,
               new_tokens=args.new_tokens, read_bandwidth_gbs=bandwidth,
               weight_bytes=weight_bytes, batches=results)


if __name__ == "__main__":
  main()
