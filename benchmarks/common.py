"""What the benchmarks share: timing, peak RSS, and the transformers side run in a
fresh subprocess (so its peak memory and its threads are its own)."""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np


def median_seconds(fn, repeats: int) -> float:
  """Median seconds per call (robust to the machine's other load), after a warm-up."""
  fn()  # warm-up (and compilation)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_peak_gflops(size: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
  """The GFLOP/s a jitted [size, size] matmul in `dtype` reaches on the default device:
  the ceiling a row's rate is read against, measured in the same run."""
  import jax  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)  # not ones: zeros and ones run faster
  square = jax.jit(lambda x: x @ x)
  return 2 * size ** 3 / median_seconds(lambda: square(a).block_until_ready(), repeats) / 1e9


def read_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
  """The GB/s a jitted sum over a `gib`-GiB f32 array reaches on the default device
  (each call reads it once from memory: far larger than the caches): the ceiling
  of a step that must stream all its weights, measured in the same run."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jnp.ones((int(gib * 2 ** 28),), jnp.float32)
  total = jax.jit(jnp.sum)
  return x.nbytes / median_seconds(lambda: total(x).block_until_ready(), repeats) / 1e9


def compiled_flops(compiled) -> float:
  """XLA's count of the floating-point operations of one call of a compiled function."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis["flops"])


def torch_flops(fn) -> float:
  """torch's count (`FlopCounterMode`) of the floating-point operations of one fn()."""
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  with FlopCounterMode(display=False) as counter:
    fn()
  return float(counter.get_total_flops())


def rss_bytes(field: str) -> int:
  """VmRSS (now) or VmHWM (peak since the last reset) of this process, Linux."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def reset_peak_rss() -> None:
  """Makes VmHWM start again from the current RSS (Linux >= 4.0), so that the peak
  of loading (transformers dequantises a GGUF file) is not counted."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def load_torch_model(path: pathlib.Path, auto_class: str = "AutoModel"):
  """A transformers model (eager attention, f32, eval) from a checkpoint folder or
  a GGUF file, with transformers' logging quiet."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  transformers.logging.set_verbosity_error()
  location = (dict(pretrained_model_name_or_path=path.parent, gguf_file=path.name)
              if path.suffix == ".gguf" else dict(pretrained_model_name_or_path=path))
  return getattr(transformers, auto_class).from_pretrained(
      **location, attn_implementation="eager", dtype=torch.float32).eval()


def run_worker(script: str, arguments: list[str]) -> dict:
  """Runs `script --torch-worker ...arguments` in a fresh Python and returns the
  JSON object on its last output line."""
  cmd = [sys.executable, script, *arguments]
  return json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                   text=True).stdout.splitlines()[-1])


def torch_gate_gradients(model, arrays: dict, *, predictions: bool) -> np.ndarray:
  """A transformers BERT classifier's per-example head importance terms, signed
  H^T dL/dH: [n, L, N], the way such a score is usually computed (bertology,
  Michel et al. 2019): a forward hook on every layer's self-attention multiplies
  its output by per-head gates, and each example gets its own forward and
  backward pass (transformers 5 has no `head_mask`). arrays: torch tensors
  input_ids, attention_mask, token_type_ids [n, T] and labels [n]; `predictions`:
  the model's own argmax class as the label instead."""
  import torch  # pylint: disable=g-import-not-at-top
  config = model.config
  gates = torch.ones(config.num_hidden_layers, config.num_attention_heads, requires_grad=True)
  width = config.hidden_size // config.num_attention_heads

  def gate(layer):
    def hook(module, inputs, output):
      return (output[0] * gates[layer].repeat_interleave(width), *output[1:])
    return hook

  handles = [layer.attention.self.register_forward_hook(gate(i))
             for i, layer in enumerate(model.bert.encoder.layer)]
  out = []
  for i in range(len(arrays["input_ids"])):
    length = int(arrays["attention_mask"][i].sum())
    logits = model(**{k: arrays[k][i:i + 1, :length]
                      for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    label = logits.argmax(-1).detach() if predictions else arrays["labels"][i:i + 1]
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, label), gates)
    out.append(grad.numpy().copy())
  for handle in handles:
    handle.remove()
  return np.stack(out)


def minilm_sst2_args(description: str) -> argparse.Namespace:
  """The command line of the benchmarks over SST-2 sentences on MiniLM (importance.py,
  scan.py): sizes, repeats, the data folder, the output folder, and the hidden
  --torch-worker their transformers side runs under."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--max_length", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--data", default=str(pathlib.Path(__file__).resolve().parents[2]
                                            / "shared" / "data"))
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
  parser.add_argument("--torch-worker", nargs=2, help=argparse.SUPPRESS)
  return parser.parse_args()


def write_record(out: str, name: str, **fields) -> None:
  """Writes <out>/<name>.json: the machine (platform, JAX devices) and `fields`."""
  import jax  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(out) / f"{name}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  record = dict(platform=platform.platform(), devices=str(jax.devices()), **fields)
  path.write_text(json.dumps(record, indent=2))
  print(f"wrote {path}")
