"""Peak memory of a head-similarity scan at Llama-2-7B shapes: held maps vs streaming.

Paths, all on one sequence with the same view (default: the generation-to-prompt
block, first half of the sequence the prompt), giving the same numbers:
  forward       no capture, no similarity (the floor)
  maps          capture of every layers.<i>.attn.pattern: maps [L, 1, N, T, T] returned
  materialised  the same capture, then head_similarity in the same jit
  streaming     streaming_head_similarity: each layer's cosine inside its layer

Default (CPU): ONE full-size layer (4096 hidden, 32 heads, --length tokens,
random f32 weights) compiled and run per path; then the whole 32-layer model
compiled only, from abstract f32 shapes (jax.eval_shape, nothing allocated), to
show how each path's footprint grows with depth. (f32 because XLA:CPU turns
bf16 matmuls into f32 copies of the weights, which would swamp the picture.)
--full (accelerator): the whole 32-layer model, random bf16 weights from
jax.jit(model.init), each path compiled and run: footprint, device peak, time.

Memory is XLA's compiled footprint (`memory_analysis()`: arguments + outputs +
temporaries); activations = outputs + temporaries (parameters excluded). On an
accelerator the device's peak_bytes_in_use after each path is added: a
high-water mark, so paths run from the smallest footprint up.

  python benchmarks/streaming_memory.py [--length 2048] [--out benchmarks/results]
  python benchmarks/streaming_memory.py --full   # on a GPU/TPU
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax_attnalign.analysis.similarity import head_similarity
from jax_attnalign.analysis.streaming import streaming_head_similarity
from jax_attnalign.models import (PATTERNS, ModelConfig, attention_maps, build_model,
                                  run_with_hooks)

GIB = 2 ** 30
PATHS = ("forward", "streaming", "materialised", "maps")  # smallest footprint first


def path_fns(model, view: str) -> dict:
  """name -> fn(params, ids, mask, special, prompt_lengths)."""
  def captured(params, ids, mask):
    _, captured = run_with_hooks(model, params, {"input_ids": ids, "attention_mask": mask},
                                 capture=PATTERNS)
    return attention_maps(captured)  # [L, 1, N, T, T]

  return {
      "forward": lambda p, ids, mask, special, lengths: model.apply(
          {"params": p}, ids, mask).last_hidden_state,
      "streaming": lambda p, ids, mask, special, lengths: streaming_head_similarity(
          model, p, ids, mask, view, special_mask=special, prompt_lengths=lengths),
      "materialised": lambda p, ids, mask, special, lengths: head_similarity(
          captured(p, ids, mask), view, attention_mask=mask, special_mask=special,
          prompt_lengths=lengths, is_decoder=True),
      "maps": lambda p, ids, mask, special, lengths: captured(p, ids, mask),
  }


def inputs(length: int, vocab: int) -> tuple:
  """One sequence: random ids, BOS special at slot 0, prompt = first half."""
  ids = np.random.RandomState(0).randint(3, vocab, (1, length)).astype(np.int32)
  special = np.zeros((1, length), np.int32)
  special[:, 0] = 1
  return (jnp.asarray(ids), jnp.ones((1, length), jnp.int32), jnp.asarray(special),
          jnp.full((1,), length // 2, jnp.int32))


def footprint(compiled) -> dict:
  mem = compiled.memory_analysis()
  return dict(argument_bytes=int(mem.argument_size_in_bytes),
              output_bytes=int(mem.output_size_in_bytes),
              temp_bytes=int(mem.temp_size_in_bytes),
              activation_bytes=int(mem.output_size_in_bytes + mem.temp_size_in_bytes),
              peak_bytes=int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                             + mem.temp_size_in_bytes - mem.alias_size_in_bytes))


def measure(jitted, args, repeats: int, next_args=None) -> tuple[dict, object]:
  """Compiles a jitted fn, runs it 1 + repeats times; footprint, timings, the last result.

  next_args(out, args) -> the next call's args (e.g. a training step's new state
  when the old one was donated); default: the same args every call.
  """
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  row = dict(footprint(compiled), compile_s=time.perf_counter() - start)
  advance = next_args or (lambda out, args: args)
  try:
    out = jax.block_until_ready(compiled(*args))  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
      args = advance(out, args)
      out = jax.block_until_ready(compiled(*args))
    row["seconds"] = (time.perf_counter() - start) / repeats
  except Exception as e:  # pylint: disable=broad-except  # e.g. RESOURCE_EXHAUSTED
    row["error"], out = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", None
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    row["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return row, out


def compare(outputs: dict) -> float | None:
  """Largest |streaming - materialised| cosine, when both ran."""
  a, b = outputs.get("streaming"), outputs.get("materialised")
  return None if a is None or b is None else float(jnp.max(jnp.abs(a - b)))


def run_paths(model, params, args, view: str, repeats: int,
              paths: list[str]) -> tuple[list, float | None]:
  fns, rows, outputs = path_fns(model, view), [], {}
  for name in paths:
    row, outputs[name] = measure(jax.jit(fns[name]), (params, *args), repeats)
    rows.append(dict(path=name, **row))
    print(f"  {name}: {row}", flush=True)
    if name == "maps":
      outputs.pop(name)  # free the maps
  return rows, compare(outputs)


def compile_only(model, args, view: str) -> list:
  """Footprints of every path of `model` from abstract shapes (nothing runs)."""
  params = jax.eval_shape(model.init, jax.random.key(0), args[0])["params"]
  fns = path_fns(model, view)
  return [dict(path=name, **footprint(jax.jit(fns[name]).lower(params, *args).compile()))
          for name in PATHS]


def table(title: str, rows: list) -> str:
  lines = [f"\n\n{title}\n", "| path | activations (GiB) | peak incl. params (GiB) "
           "| device peak (GiB) | time (s) |", "|---|---|---|---|---|"]
  for r in rows:
    device = f"{r['device_peak_bytes'] / GIB:.2f}" if "device_peak_bytes" in r else "-"
    secs = f"{r['seconds']:.3f}" if "seconds" in r else r.get("error", "not run")
    lines.append(f"| {r['path']} | {r['activation_bytes'] / GIB:.3f} "
                 f"| {r['peak_bytes'] / GIB:.2f} | {device} | {secs} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=2048)
  parser.add_argument("--view", default="gen_to_prompt")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed runs per path (default: 1 on CPU, 3 with --full)")
  parser.add_argument("--full", action="store_true",
                      help="run the whole 32-layer model (bf16 weights; an accelerator)")
  parser.add_argument("--paths", default=",".join(PATHS),
                      help="which paths run, in order (the held maps take 4 x layers x "
                      "heads x length^2 bytes: 275 GB at 8,192 tokens)")
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
  args = parser.parse_args()
  paths = args.paths.split(",")
  full_cfg = ModelConfig.preset("llama2-7b")
  batch = inputs(args.length, full_cfg.vocab_size)
  device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
  print(f"Llama-2-7B shapes, 1 x {args.length} tokens, view {args.view!r}, {device}")
  result = dict(length=args.length, view=args.view, device=device,
                platform=platform.platform(), jax=jax.__version__,
                maps_bytes_all_layers=4 * full_cfg.num_layers * full_cfg.num_heads
                * args.length ** 2)
  if args.full:
    model = build_model(full_cfg, task="base", dtype=jnp.bfloat16,
                        param_dtype=jnp.bfloat16)
    params = jax.jit(model.init)(jax.random.key(0), batch[0][:, :8])["params"]
    rows, diff = run_paths(model, params, batch, args.view, args.repeats or 3, paths)
    result.update(mode="full", layers=full_cfg.num_layers, rows=rows, max_abs_diff=diff)
    report = table("Whole 32-layer model, bf16 weights, run", rows)
  else:
    model = build_model(full_cfg.replace(num_layers=1), task="base")
    params = jax.jit(model.init)(jax.random.key(0), batch[0][:, :8])["params"]
    rows, diff = run_paths(model, params, batch, args.view, args.repeats or 1, paths)
    del params
    full_rows = compile_only(build_model(full_cfg, task="base"), batch, args.view)
    result.update(mode="layer", rows=rows, max_abs_diff=diff, full_model_compiled=full_rows)
    report = (table("One full-size layer, f32 weights, run (the similarity paths skip "
                    "its MLP: dead code to them)", rows)
              + table("Whole 32-layer model, f32, compiled only (not run)", full_rows))
  report += (f"\n\nall layers' f32 maps: {result['maps_bytes_all_layers'] / GIB:.1f} GiB;"
             f" max |streaming - materialised| cosine: {diff}")
  print(report)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"streaming_memory_{result['mode']}_{args.length}.json"
  path.write_text(json.dumps(result, indent=2))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
