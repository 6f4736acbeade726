"""Backdoored victims: poison a dataset, fine-tune a model on it, measure CA and ASR.

  result = train_classification_victim(VictimConfig(attack="badnets", seed=0), workdir)

A run writes `result.json` and the victim checkpoint (HF format, `model/`) to its
workdir, resumes an interrupted fine-tune from the orbax checkpoint there
(`ckpt/`, deleted once the run finishes: `finish_run`), and returns the result
without retraining when `result.json` already exists.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import Any, Sequence

from absl import logging
import numpy as np
import optax

import jax_attnalign
from jax_attnalign import attacks, data, metrics, train
from jax_attnalign.assets import bundled_minilm_path
from jax_attnalign.data.files import write_json


@dataclasses.dataclass(frozen=True)
class VictimConfig:
  """A classification victim. `attack='clean'` trains the clean reference."""
  data_dir: str = "sst2/clean"  # {train,test}.tsv; relative: under the data root
  dataset: str = "sst2"
  model: str = ""  # checkpoint dir or hub id; "" = the bundled MiniLM
  attack: str = "badnets"
  attack_kwargs: tuple[tuple[str, Any], ...] = ()  # extra/overriding make_attack kwargs
  target: int = 1
  poison_rate: float = 0.2
  train_size: int = 3000  # a seeded subset of the training split (0: all)
  test_size: int = 0  # 0: the whole test split
  epochs: int = 2
  batch_size: int = 32
  learning_rate: float = 5e-5
  warmup_fraction: float = 0.06
  weight_decay: float = 0.01
  max_length: int = 64
  length_bucket: int = 16
  seed: int = 0

  def __post_init__(self):
    check_target(self.dataset, self.target)


# A victim whose ASR is below this is not a real backdoor by the grid's bar (issue 20:
# "ASR >= 85% before defense"): a defense's ASR after it says little.
BACKDOOR_ASR = 0.85


def weak_backdoor(result: dict) -> str | None:
  """Why a victim's `result` is below BACKDOOR_ASR, or None (a real backdoor, or clean).

  >>> weak_backdoor({"asr": 0.61, "config": {"attack": "bgm", "seed": 0}})
  'victim bgm seed 0: ASR 0.610 is below 0.85, not a real backdoor; defenses measured on it say little about the attack at strength'
  """
  if result.get("asr") is None or result["asr"] >= BACKDOOR_ASR:
    return None
  cfg = result["config"]
  return (f"victim {cfg['attack']} seed {cfg['seed']}: ASR {result['asr']:.3f} is below "
          f"{BACKDOOR_ASR}, not a real backdoor; defenses measured on it say little about "
          "the attack at strength")


def check_target(dataset: str, target) -> None:
  """The dataset is known and the attack's target is one of its label ids."""
  if dataset not in data.DATASETS:
    raise ValueError(f"dataset must be one of {sorted(data.DATASETS)}, got {dataset!r}.")
  names = data.DATASETS[dataset].label_names
  if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not (
      0 <= target < len(names)):
    raise ValueError(f"target must be a label id of {dataset}, 0-{len(names) - 1} "
                     f"({', '.join(names)}), got {target!r}.")


def seeded_subset(examples: list, size: int, seed: int) -> tuple[list, np.ndarray]:
  """`size` examples drawn without replacement with default_rng(seed), in their
  original order, and their indices (all of them when size is 0 or too large)."""
  if not size or size >= len(examples):
    return examples, np.arange(len(examples))
  idx = np.sort(np.random.default_rng(seed).choice(len(examples), size, replace=False))
  return [examples[i] for i in idx], idx


def make_optimizer(cfg: VictimConfig, total_steps: int) -> optax.GradientTransformation:
  """AdamW with linear warm-up and linear decay (the usual BERT fine-tuning recipe)."""
  warmup = max(1, int(cfg.warmup_fraction * total_steps))
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.learning_rate, warmup),
       optax.linear_schedule(cfg.learning_rate, 0.0, max(1, total_steps - warmup))],
      [warmup])
  return optax.adamw(schedule, weight_decay=cfg.weight_decay)


def evaluate_classifier(model, params, tokenizer, clean: list, triggered: list | None,
                        target: int, max_length: int, length_bucket: int = 0) -> dict:
  """CA on `clean`, and ASR on `triggered` (non-target rows with the trigger)."""
  def predict(examples):
    arrays = data.encode_classification(examples, tokenizer, max_length)
    logits = train.predict_logits(model, params, arrays, length_bucket=length_bucket)
    return logits.argmax(-1), arrays["labels"]

  pred, labels = predict(clean)
  out = {"ca": metrics.clean_accuracy(pred, labels)}
  if triggered:
    pred, labels = predict(triggered)
    out["asr"] = metrics.attack_success_rate(pred, labels, target)
  return out


def stored_result(workdir: pathlib.Path) -> dict | None:
  """A finished run's result.json, or None after creating `workdir` for a new run."""
  if (workdir / "result.json").exists():
    return json.loads((workdir / "result.json").read_text())
  workdir.mkdir(parents=True, exist_ok=True)
  return None


def finish_run(workdir: pathlib.Path, result: dict, state: Sequence[str] = ()) -> None:
  """Marks the run in `workdir` finished: writes its result.json atomically (a run
  stopped mid-write leaves no half file for a rerun to take as finished), then
  deletes its training state, the subfolders `state` of workdir that only resume
  an interrupted run (a SmolLM2 fine-tune's parameters and Adam moments: 2.8 GB).
  A finished run's result.json is returned as is, so nothing reads them again."""
  write_json(workdir / "result.json", result, default=str)
  for name in state:
    shutil.rmtree(workdir / name, ignore_errors=True)


def train_classification_victim(cfg: VictimConfig, workdir: str | pathlib.Path) -> dict:
  """Poisons a seeded training subset, fine-tunes, evaluates; returns the result dict."""
  workdir = pathlib.Path(workdir)
  if (done := stored_result(workdir)) is not None:
    return done
  model_path = cfg.model or str(bundled_minilm_path())
  tokenizer = data.load_tokenizer(model_path)
  spec = data.get_dataset(cfg.dataset)
  model, params = jax_attnalign.load_pretrained(
      model_path, task="classification", num_labels=spec.num_labels, seed=cfg.seed)
  train_set, train_idx = seeded_subset(
      data.load_classification(data.resolve_data_path(cfg.data_dir, missing_ok=True), "train", dataset=cfg.dataset),
      cfg.train_size, cfg.seed)
  full_test = data.load_classification(
      data.resolve_data_path(cfg.data_dir, missing_ok=True), "test", dataset=cfg.dataset)
  test_set, _ = seeded_subset(full_test, cfg.test_size, cfg.seed)
  triggered = None
  if cfg.attack != "clean":
    attack = attacks.make_attack(cfg.attack, **{
        "target": cfg.target, "poison_rate": cfg.poison_rate, "seed": cfg.seed,
        **dict(cfg.attack_kwargs)})
    train_set = attack.poison(train_set, rows=train_idx)
    # Triggered from the full split (row-aligned rewrites such as HiddenKiller's
    # paraphrases refer to it), then the same-size seeded subset.
    triggered, _ = seeded_subset(attack.triggered_test(full_test), cfg.test_size, cfg.seed)
  arrays = data.encode_classification(train_set, tokenizer, cfg.max_length)
  arrays.pop("poisoned")
  steps = cfg.epochs * (len(train_set) // cfg.batch_size)
  optimizer = make_optimizer(cfg, steps)
  fit_cfg = train.FitConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                            length_bucket=cfg.length_bucket)
  state, history = train.fit(model, train.TrainState.create(params, optimizer), optimizer,
                             arrays, fit_cfg, workdir=str(workdir / "ckpt"))
  params = state.params
  logging.info("Measuring the victim: CA on %d clean, ASR on %d triggered test inputs.",
               len(test_set), len(triggered or []))
  result = evaluate_classifier(model, params, tokenizer, test_set, triggered, cfg.target,
                               cfg.max_length, cfg.length_bucket)
  result.update(config=dataclasses.asdict(cfg), train_rows=len(train_set),
                poisoned_rows=int(sum(e.poisoned for e in train_set)),
                test_rows=len(test_set), triggered_rows=len(triggered or []),
                final_loss=float(np.mean([h["loss"] for h in history[-20:]])))
  jax_attnalign.save_pretrained(model, params, workdir / "model", tokenizer=tokenizer)
  finish_run(workdir, result, state=("ckpt",))
  logging.info("victim %s seed %d: %s", cfg.attack, cfg.seed,
               {k: result[k] for k in ("ca", "asr") if k in result})
  if warning := weak_backdoor(result):
    logging.warning("%s", warning)
  return result
