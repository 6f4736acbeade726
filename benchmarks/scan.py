"""The whole head-safety scan of real inputs: ours against the transformers pipeline a user would write.

The scan is step 1 of a sanitisation round (`defense.sanitize.classify`, the
paper's eq. 2-5): per input, every layer's pairwise cosine of its heads'
[CLS]-row attention over the words (view 'cls_row_nospecial'), averaged over the
inputs; each head's largest cosine to another head; per-example gradient
importance (the model's own predictions as labels); the safety score and the
three classes (alpha 0.7, tau 0.3). Side by side in one run on --inputs SST-2
test sentences (MiniLM classifier, --max_length tokens):
  * ours: `classify` (jitted streaming similarity and vmapped gate gradients,
    batches of --batch_size over the data mesh);
  * transformers in a fresh subprocess: `output_attentions=True` batches, the
    cosines in torch, the importance with gating hooks and one backward pass per
    example (`common.torch_gate_gradients`), the scores in NumPy.
Both read the same classifier (ours exported; the head on the bundled MiniLM is
freshly initialised); their max-similarities, importances and classes are
compared. Median of --repeats scans after a warm-up. Prints a table, writes JSON.

  python benchmarks/scan.py [--inputs 512] [--data ../shared/data] [--out benchmarks/results]
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
from jax_attnalign.defense.sanitize import SanitizeConfig, classify
from common import (load_torch_model, median_seconds, minilm_sst2_args, run_worker,
                    torch_gate_gradients, write_record)

FIELDS = ("input_ids", "attention_mask", "token_type_ids", "special_mask")
RESULTS = ("max_similarity", "importance", "labels")


def bench_ours(model, params, arrays: dict, config: SanitizeConfig, repeats: int) -> tuple:
  mesh = parallel.data_mesh()
  run = lambda: classify(model, params, {k: arrays[k] for k in FIELDS}, config, mesh)
  seconds = median_seconds(run, repeats)
  return (dict(impl=f"jax_attnalign classify (batch {config.score_batch_size})",
               seconds=seconds, inputs_per_s=len(arrays["input_ids"]) / seconds), run())


def torch_scan(model, arrays: dict, alpha: float, tau: float, batch_size: int) -> dict:
  """The scan as a transformers user would write it (module docstring)."""
  import torch  # pylint: disable=g-import-not-at-top
  n, total = len(arrays["input_ids"]), 0.0
  with torch.no_grad():
    for i in range(0, n, batch_size):
      batch = {k: arrays[k][i:i + batch_size] for k in FIELDS[:3]}
      attentions = model(**batch, output_attentions=True).attentions  # L x [B, N, T, T]
      keep = (batch["attention_mask"] > 0) & (arrays["special_mask"][i:i + batch_size] == 0)
      rows = torch.stack(attentions)[:, :, :, 0, :] * keep[None, :, None, :]  # [L, B, N, T]
      rows = rows / rows.sum(-1, keepdim=True)  # renormalised over the words
      unit = torch.nn.functional.normalize(rows, dim=-1)
      total = total + (unit @ unit.transpose(-1, -2)).sum(1)  # [L, N, N]
  cosine = (total / n).numpy()
  heads = cosine.shape[-1]
  max_similarity = np.where(np.eye(heads, dtype=bool), -np.inf, cosine).max(-1)
  importance = np.abs(torch_gate_gradients(model, arrays, predictions=True)).mean(0)
  importance = importance / importance.max()
  sim = (max_similarity - max_similarity.min()) / (max_similarity.max() - max_similarity.min())
  safety = 1.0 - (alpha * sim + (1.0 - alpha) * importance)
  labels = np.where(safety < tau, 0, np.where(safety > 1.0 - tau, 2, 1))
  return {"max_similarity": max_similarity, "importance": importance, "labels": labels}


def torch_worker(folder: str, arrays_file: str, alpha: float, tau: float, batch_size: int,
                 repeats: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  model = load_torch_model(pathlib.Path(folder), "AutoModelForSequenceClassification")
  arrays = {k: torch.tensor(v).long() for k, v in np.load(arrays_file).items()}
  run = lambda: torch_scan(model, arrays, alpha, tau, batch_size)
  seconds = median_seconds(run, repeats)
  return dict(impl=f"HF torch {torch.__version__} (attentions, hooks, per-example backward)",
              seconds=seconds, inputs_per_s=len(arrays["input_ids"]) / seconds,
              **{k: v.tolist() for k, v in run().items()})


def main():
  args = minilm_sst2_args(__doc__.splitlines()[0])
  config = SanitizeConfig(score_batch_size=args.batch_size)
  heads = config.classify
  if args.torch_worker:
    print(json.dumps(torch_worker(*args.torch_worker, heads.alpha, heads.tau, args.batch_size,
                                  args.repeats)))
    return
  path = assets.bundled_minilm_path()
  examples = data.load_classification(pathlib.Path(args.data) / "sst2" / "clean", "test",
                                      limit=args.inputs)
  arrays = data.encode_classification(examples, data.load_tokenizer(path), args.max_length)
  model, params = jax_attnalign.load_pretrained(path, task="classification")
  ours, found = bench_ours(model, params, arrays, config, args.repeats)
  with tempfile.TemporaryDirectory() as tmp:
    jax_attnalign.save_pretrained(model, params, f"{tmp}/model")
    np.savez(f"{tmp}/arrays.npz", **{k: arrays[k] for k in FIELDS})
    theirs = run_worker(__file__, ["--torch-worker", f"{tmp}/model", f"{tmp}/arrays.npz",
                                   "--repeats", str(args.repeats),
                                   "--batch_size", str(args.batch_size)])
  agree = {k: float(np.abs(np.asarray(found[k], np.float64)
                           - np.asarray(theirs.pop(k), np.float64)).max()) for k in RESULTS}
  ratio = ours["inputs_per_s"] / theirs["inputs_per_s"]
  print(f"Head-safety scan, MiniLM-L6 classifier (6 x 12 heads), {len(examples)} SST-2 test "
        f"sentences of at most {args.max_length} tokens, {jax.devices()[0].platform} "
        f"({os.cpu_count()} cores), f32\n")
  print("| implementation | inputs/s | s for all |")
  print("|---|---|---|")
  for r in (ours, theirs):
    print(f"| {r['impl']} | {r['inputs_per_s']:.1f} | {r['seconds']:.2f} |")
  print(f"\nours / transformers {ratio:.1f}x; largest differences: max-similarity "
        f"{agree['max_similarity']:.1e}, importance {agree['importance']:.1e}, classes "
        f"{agree['labels']:.0f} (0: the same classes)")
  write_record(args.out, "scan", inputs=len(examples), max_length=args.max_length,
               rows=[ours, theirs], ratio=ratio, max_differences=agree)


if __name__ == "__main__":
  main()
