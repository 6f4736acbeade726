"""Speed and memory of one head-wise fine-tuning step at Llama-2-7B shapes, beside plain Adam.

Steps, each on --batch x --length tokens (causal-LM loss on each row's second half,
the "response"; random head classes, 10% suspicious and 30% safe per layer):
  adam             optax.adam(1e-4) on every parameter: the baseline
  headwise         headwise_optimizer (the fine-tune of a sanitisation round):
                   per-head rates, everything else at the intermediate rate
  headwise_frozen  headwise_optimizer(other="frozen"): attention heads only
  align            one alignment step (eq. 7 on the generation-to-prompt view,
                   every layer's maps held for the backward pass)
The training steps are `train.train_step` (jitted, state donated), the alignment
step `defense.alignment_step` (jitted, params and optimizer state donated).

Default (CPU): ONE full-size layer (4096 hidden, 32 heads, 11008 MLP, 32000
vocabulary), f32, --length 512, compiled and run. --full (accelerator): the whole
32-layer model with random bf16 weights, --length 2048.

Model FLOPs utilisation (MFU) is the model's FLOPs per step by PaLM's count
(6 x parameters + 12 x layers x hidden x length, per token; the alignment row has
the same count though it adds the similarity) over the step's seconds, against a
[8192 x 8192] matmul ([2048 x 2048] on CPU) in the weights' dtype measured in the
same run.

Memory is XLA's compiled footprint: the peak (arguments + outputs + temporaries -
donated aliases, i.e. parameters and optimizer state plus the step's working
memory) and the temporaries alone (gradients, activations kept for the backward
pass), plus the device's peak_bytes_in_use on an accelerator (a high-water
mark: steps run from the smallest expected footprint up). Throughput ratios are
against `adam` from the same run.

  python benchmarks/finetune_step.py [--length 512] [--out benchmarks/results]
  python benchmarks/finetune_step.py --full [--batch 2]   # on a GPU/TPU
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import matmul_peak_gflops
from jax_attnalign import train
from jax_attnalign.analysis.safety import HeadClass
from jax_attnalign.defense import (alignment_optimizer, alignment_rates, alignment_step,
                                   headwise_init, headwise_optimizer)
from jax_attnalign.models import ModelConfig, build_model
from streaming_memory import GIB, inputs, measure

STEPS = ("headwise_frozen", "align", "adam", "headwise")  # smallest footprint first


def head_classes(config: ModelConfig, seed: int = 0) -> np.ndarray:
  """[L, N] classes: per layer 10% suspicious, 30% safe (at least one each), rest intermediate."""
  rng = np.random.default_rng(seed)
  n = config.num_heads
  labels = np.full((config.num_layers, n), HeadClass.INTERMEDIATE, np.int32)
  for layer in labels:
    order = rng.permutation(n)
    layer[order[:max(1, n // 10)]] = HeadClass.SUSPICIOUS
    layer[order[-max(1, 3 * n // 10):]] = HeadClass.SAFE
  return labels


def step_fns(model, params, labels: np.ndarray) -> dict:
  """name -> (jitted fn, its state from params, how its output becomes the next state)."""
  cfg = model.config
  optimizers = {
      "adam": optax.adam(1e-4),
      "headwise": headwise_optimizer(params),
      "headwise_frozen": headwise_optimizer(params, other="frozen"),
  }
  out = {}
  for name, opt in optimizers.items():
    fn = jax.jit(lambda state, batch, rng, opt=opt: train.train_step(
        model, opt, "causal_lm", False, state, batch, rng), donate_argnums=0)
    init = (lambda p, opt=opt: None) if name == "adam" else (
        lambda p, opt=opt: headwise_init(opt, p, labels, cfg))
    out[name] = (fn, lambda p, opt=opt, init=init: train.TrainState.create(p, opt, init(p)),
                 lambda result: result[0])
  opt = alignment_optimizer(params)
  align = alignment_step(model, opt, "gen_to_prompt")
  out["align"] = (jax.jit(lambda state, batch, rng: align(*state, batch, labels),
                          donate_argnums=0),
                  lambda p: (p, headwise_init(opt, p, labels, cfg, alignment_rates(1e-4))),
                  lambda result: result[:2])
  return out


def model_flops_per_token(config: ModelConfig, n_params: int, length: int) -> float:
  """PaLM's count (Chowdhery et al. 2022, app. B): 6N for the matmuls of forward and
  backward, plus 12 x layers x hidden x length for the attention scores and values."""
  return 6 * n_params + 12 * config.num_layers * config.hidden_size * length


def measure_step(fn, state, batch, rng, advance, repeats: int) -> dict:
  """`measure` with each timed step on the last one's state (the old one is donated)."""
  row, _ = measure(fn, (state, batch, rng), repeats,
                   next_args=lambda out, args: (advance(out), *args[1:]))
  if "seconds" in row:
    row["tokens_per_s"] = batch["input_ids"].size / row["seconds"]
  return row


def table(rows: list) -> str:
  base = next((r for r in rows if r["step"] == "adam" and "seconds" in r), None)
  lines = ["| step | peak incl. state (GiB) | temporaries (GiB) | device peak (GiB) "
           "| s/step | tokens/s | MFU | speed vs adam |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    device = f"{r['device_peak_bytes'] / GIB:.2f}" if "device_peak_bytes" in r else "-"
    if "seconds" in r:
      ratio = f"{base['seconds'] / r['seconds']:.2f}" if base else "-"
      timing = f"{r['seconds']:.3f} | {r['tokens_per_s']:.0f} | {r['mfu']:.1%} | {ratio}"
    else:
      timing = f"{r.get('error', 'not run')} | - | - | -"
    lines.append(f"| {r['step']} | {r['peak_bytes'] / GIB:.2f} "
                 f"| {r['temp_bytes'] / GIB:.2f} | {device} | {timing} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=None,
                      help="tokens (default: 512 on CPU, 2048 with --full)")
  parser.add_argument("--batch", type=int, default=1, help="sequences per step")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed steps per row (default: 1 on CPU, 3 with --full)")
  parser.add_argument("--steps", default=",".join(STEPS), help="which rows, in order")
  parser.add_argument("--full", action="store_true",
                      help="the whole 32-layer model (bf16 weights; an accelerator)")
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
  args = parser.parse_args()
  length = args.length or (2048 if args.full else 512)
  cfg = ModelConfig.preset("llama2-7b")
  if not args.full:
    cfg = cfg.replace(num_layers=1)
  dtype = jnp.bfloat16 if args.full else jnp.float32
  model = build_model(cfg, dtype=dtype, param_dtype=dtype)
  ids, mask, special, prompt_lengths = (jnp.repeat(x, args.batch, axis=0)
                                        for x in inputs(length, cfg.vocab_size))
  loss_mask = jnp.broadcast_to(jnp.arange(length) >= length // 2, ids.shape).astype(jnp.int32)
  batch = dict(input_ids=ids, attention_mask=mask, loss_mask=loss_mask,
               special_mask=special, prompt_lengths=prompt_lengths)
  labels = head_classes(cfg)
  init = jax.jit(model.init)
  device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
  mode = "full" if args.full else "layer"
  print(f"Llama-2-7B shapes ({cfg.num_layers} layer(s), {jnp.dtype(dtype).name}), "
        f"{args.batch} x {length} tokens, {device}", flush=True)
  peak = matmul_peak_gflops(8192 if args.full else 2048, dtype=jnp.dtype(dtype).name) * 1e9
  shapes = jax.eval_shape(init, jax.random.key(0), ids[:1, :8])["params"]
  n_params = sum(x.size for x in jax.tree.leaves(shapes))
  per_token = model_flops_per_token(cfg, n_params, length)
  result = dict(mode=mode, layers=cfg.num_layers, dtype=jnp.dtype(dtype).name, length=length,
                batch=args.batch, parameters=n_params, model_flops_per_token=per_token,
                matmul_peak_flops=peak, device=device, platform=platform.platform(),
                jax=jax.__version__, rows=[])
  print(f"  {n_params / 1e9:.2f}B parameters; matmul peak {peak / 1e9:,.0f} GFLOP/s", flush=True)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"finetune_step_{mode}_batch{args.batch}.json"
  fns = step_fns(model, shapes, labels)
  for name in args.steps.split(","):
    fn, make_state, advance = fns[name]
    state = make_state(init(jax.random.key(0), ids[:1, :8])["params"])
    row = dict(step=name, **measure_step(fn, state, batch, jax.random.key(1), advance,
                                         args.repeats or (3 if args.full else 1)))
    del state
    if "tokens_per_s" in row:
      row["mfu"] = row["tokens_per_s"] * per_token / peak
    result["rows"].append(row)
    print(f"  {row}", flush=True)
    path.write_text(json.dumps(result, indent=2))  # after every row: a killed run keeps its rows
  print(table(result["rows"]))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
