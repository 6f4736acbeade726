"""Fine-tuning throughput of the bundled SmolLM2-135M on real chat rows: what makes a victim fast.

Two workloads, each a few real batches encoded as the victims encode them
(right-padded prompt + response, loss on the response and its EOS):
  classification  SST-2 sentences in the paper's Listing-1 chat prompt, the
                  label word as the answer (max_length 128)
  generation      Alpaca records in SmolLM2's chat template (max_length 256)
Four variants of the same jitted AdamW step (`train.train_step`, state donated):
  padded     every row padded to max_length, logits at every position
  bucketed   right padding cut per batch to a multiple of 16 (`trim_padding`)
  head       bucketed, and the LM head only where the loss is
             (`with_loss_positions`: what `train.fit` does for causal LM)
  ours       head, with rows of similar length batched together
             (`length_groups`): what the decoder victims train with
Every batch shape is compiled before timing; a pass over all batches is timed
(median of --repeats passes). Prints a markdown table, writes JSON.

  python benchmarks/lm_finetune.py [--batches 6] [--batch_size 8] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import jax
import numpy as np
import optax

import jax_attnalign
from jax_attnalign import assets, data, train
from common import write_record

WORKLOADS = {"classification": 128, "generation": 256}  # name: max_length
VARIANTS = ("padded", "bucketed", "head", "ours")
BUCKET = 16


def workload_arrays(name: str, tokenizer, root: pathlib.Path, rows: int) -> dict:
  if name == "classification":
    examples = data.load_classification(root / "sst2" / "clean", "train", limit=rows)
    pairs = [data.classification_chat(e, "sst2", tokenizer) for e in examples]
  else:
    records = data.load_instructions(root / "alpaca" / "alpaca_small_2000.json", limit=rows)
    pairs = [data.instruction_chat(r, tokenizer) for r in records]
  prompts, answers = zip(*pairs)
  return data.encode_prompt_response(prompts, answers, tokenizer, WORKLOADS[name])


def variant_batches(arrays: dict, batch_size: int, variant: str) -> list[dict]:
  groups = len(arrays["input_ids"]) // batch_size if variant == "ours" else 0
  batches = list(data.iterate_batches(arrays, batch_size, seed=0, drop_remainder=True,
                                      length_groups=groups))
  if variant != "padded":
    batches = [train.trim_padding(b, BUCKET) for b in batches]
  if variant in ("head", "ours"):
    batches = [train.with_loss_positions(b) for b in batches]
  return batches


def bench(model, params, batches: list[dict], repeats: int) -> dict:
  optimizer = optax.adamw(1e-5)
  step = jax.jit(lambda s, b: train.train_step(model, optimizer, "causal_lm", False, s, b,
                                               jax.random.key(0)), donate_argnums=0)
  state = train.TrainState.create(jax.tree.map(lambda x: x.copy(), params), optimizer)
  for batch in batches:  # compile every shape once
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  passes = []
  for _ in range(repeats):
    start = time.perf_counter()
    for batch in batches:
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    passes.append(time.perf_counter() - start)
  seconds = float(np.median(passes))
  rows = sum(len(b["input_ids"]) for b in batches)
  real_tokens = int(sum(b["attention_mask"].sum() for b in batches))
  computed = int(sum(b["input_ids"].size for b in batches))
  return dict(seconds_per_pass=seconds, examples_per_s=rows / seconds,
              real_tokens_per_s=real_tokens / seconds, s_per_step=seconds / len(batches),
              computed_tokens=computed, real_tokens=real_tokens)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=6)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--data", default=str(pathlib.Path(__file__).resolve().parents[2]
                                            / "shared" / "data"))
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
  args = parser.parse_args()
  path = assets.bundled_smollm2_path()
  model, params = jax_attnalign.load_pretrained(path)
  tokenizer = data.load_tokenizer(path)
  results = []
  for name in WORKLOADS:
    arrays = workload_arrays(name, tokenizer, pathlib.Path(args.data),
                             args.batches * args.batch_size)
    for variant in VARIANTS:
      row = dict(workload=name, variant=variant, max_length=WORKLOADS[name],
                 **bench(model, params, variant_batches(arrays, args.batch_size, variant),
                         args.repeats))
      results.append(row)
      print(f"  {row}", flush=True)
  print(f"\nSmolLM2-135M AdamW step, f32, batch {args.batch_size}, {args.batches} real "
        f"batches per workload, {jax.devices()[0].platform} ({os.cpu_count()} cores)\n")
  print("| workload | variant | tokens computed / real | s/step | examples/s "
        "| real tokens/s | speed vs padded |")
  print("|---|---|---|---|---|---|---|")
  for r in results:
    base = next(b for b in results if b["workload"] == r["workload"]
                and b["variant"] == "padded")
    print(f"| {r['workload']} (max {r['max_length']}) | {r['variant']} "
          f"| {r['computed_tokens']} / {r['real_tokens']} | {r['s_per_step']:.2f} "
          f"| {r['examples_per_s']:.2f} | {r['real_tokens_per_s']:.0f} "
          f"| {base['seconds_per_pass'] / r['seconds_per_pass']:.2f} |")
  write_record(args.out, "lm_finetune", batch_size=args.batch_size, batches=args.batches,
               rows=results)


if __name__ == "__main__":
  main()
