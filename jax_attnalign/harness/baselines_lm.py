"""The generation baselines of Table 2(b) on an LM victim, under the defense harness.

  result = defend_lm_with_cleangen("runs/lm_gen/refusal_vpi_seed2", LMDefenseSetup(seed=2),
                                   CleanGenConfig(), workdir)
  result = defend_lm_with_graceful(victim_dir, setup, GraCeFulConfig(), workdir)
  result = defend_lm_with_muscle_lora(victim_dir, setup, MuScleLoRAConfig(...), workdir)

Each is measured on the same held-out prompts as `pipeline_lm.defend_lm_victim`
(the same seeded split of the victim's test prompts), so its row sits beside
ours in experiments.defend_lm's table; 'before' is the victim's greedy decoding.
What each defender holds differs from ours (no suspects, no monitored stream):
  * CleanGen works at decoding time and needs a clean reference model: the
    checkpoint the victim was fine-tuned from (the bundled SmolLM2-135M-Instruct
    unless the victim's config names another), as the paper uses the
    un-fine-tuned target LLM. Nothing is retrained; every answer costs a
    reference forward per `k` proposed tokens.
  * GraCeFul and MuScleLoRA are training-time defenses: the defender holds the
    victim's (poisoned) training rows and the checkpoint it was fine-tuned from,
    and trains a replacement for the victim; 'after' is that model, saved with
    its tokenizer. GraCeFul filters the rows on the pretrained checkpoint's
    gradients, then runs the victim's own recipe (`victims_lm.fine_tune_lm`) on
    the kept rows. MuScleLoRA trains its adapters on all the rows, aligned to
    the defender's clean fine-tuning rows (`pipeline_lm.defender_examples`, the
    ones our defense fine-tunes on).
  * Fine-Pruning, MEFT and PURE (Table 2(a)'s classifier baselines, on a
    Listing-1 chat classifier only) hold what they hold on an encoder: clean
    labelled rows, the defender's clean fine-tuning rows to train on and its
    calibration rows to validate on, as prompts with their labels. The chat LM
    is read as a classifier over its label words and "any other answer"
    (`chat.label_word_classifier`: the same parameters, the LM's next-token
    distribution after the prompt grouped into the label words' first tokens and
    the rest), so their cross-entropy is the LM's loss on the label word's first
    token (ours: on the whole answer), an answer that is no label word counts as
    wrong, and MEFT's maximum entropy spreads over the label words and "other";
    PURE's [CLS] row is the prompt's last token's. 'after' is the LM's own greedy
    answers, as for ours.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Callable, Sequence

import numpy as np

import jax_attnalign
from jax_attnalign.assets import bundled_smollm2_path
from jax_attnalign.baselines import (BASELINES, CHECKPOINTS, CleanGenConfig, GraCeFulConfig,
                                     MuScleLoRAConfig, cleangen_responses, graceful_filter,
                                     muscle_lora)
from jax_attnalign.data.files import write_npz
from jax_attnalign.detection.chat import ChatVictim, label_word_classifier
from jax_attnalign.errors import InputError
from jax_attnalign.harness.pipeline import store_defense_result
from jax_attnalign.harness.pipeline_lm import LMDefenseSetup, PreparedLMVictim, defender_examples
from jax_attnalign.harness.victims_lm import fine_tune_lm, training_arrays, victim_data


LM_BASELINES = {"cleangen": CleanGenConfig, "graceful": GraCeFulConfig,
                "muscle_lora": MuScleLoRAConfig,  # {variant name: config class}
                **{name: config for name, (_, config) in BASELINES.items()}}
# The MuScleLoRAConfig fields experiments.defend_lm takes from the victim's own recipe.
VICTIM_SCHEDULE = ("epochs", "batch_size", "learning_rate", "seed")


def defend_lm_with_baseline(name: str, victim_dir: str | pathlib.Path, setup: LMDefenseSetup,
                            config, workdir: str | pathlib.Path | None = None, *,
                            prepare: Callable[[], PreparedLMVictim] | None = None) -> dict:
  """The baseline `name` of LM_BASELINES with its `config` (module docstring)."""
  if name in BASELINES:
    return defend_chat_classifier(name, victim_dir, setup, config, workdir, prepare=prepare)
  defend = {"cleangen": defend_lm_with_cleangen, "graceful": defend_lm_with_graceful,
            "muscle_lora": defend_lm_with_muscle_lora}[name]
  return defend(victim_dir, setup, config, workdir, prepare=prepare)


def defend_chat_classifier(name: str, victim_dir: str | pathlib.Path, setup: LMDefenseSetup,
                           config, workdir: str | pathlib.Path | None = None, *,
                           prepare: Callable[[], PreparedLMVictim] | None = None) -> dict:
  """Classifier baseline `name` of `baselines.BASELINES` (Fine-Pruning, MEFT, PURE)
  on a Listing-1 chat classifier read as a classifier over its label words
  (module docstring), trained on the defender's `setup.clean_size` clean rows and
  validated on its calibration rows. The report is the baseline's; the model is
  saved with its tokenizer."""
  defend_fn = BASELINES[name][0]

  def defend(model, params, pretrained, tokenizer, cfg, evaluate, workdir):
    del pretrained
    if cfg.task != "classification":
      raise InputError(f"{name} is a classifier baseline; this victim is a {cfg.task} "
                       "victim. Use cleangen, graceful or muscle_lora on generation victims.")
    chat = ChatVictim(model, params, tokenizer, dataset=cfg.dataset)
    rows = defender_examples(cfg, setup)
    labelled = lambda part: {**chat.class_inputs(part),
                             "labels": np.array([e.label for e in part], np.int32)}
    after_params, report = defend_fn(
        label_word_classifier(model, chat.label_ids), params,
        labelled(rows[:setup.clean_size]), labelled(rows[setup.clean_size:]), config,
        workdir=workdir / name if workdir else None)
    return after_params, evaluate(after_params), {name: dataclasses.asdict(config), **report}

  return _baseline_run(victim_dir, setup, workdir, defend, save_model=True,
                       state=[f"{name}/{d}" for d in CHECKPOINTS], prepare=prepare)


def _baseline_run(victim_dir, setup: LMDefenseSetup, workdir, defend: Callable,
                  save_model: bool, state: Sequence[str],
                  prepare: Callable[[], PreparedLMVictim] | None) -> dict:
  """The harness around one baseline: `defend(model, params, pretrained, tokenizer,
  cfg, evaluate, workdir)` returns (after, report), `evaluate(params, decode=None)`
  giving the held-out metrics. A finished run's result.json is returned as is;
  `state`: the subfolders of workdir that only resume it, deleted once it ends.
  `prepare`: returns the victim prepared for this setup (as for
  `pipeline_lm.defend_lm_victim`), whose 'before' is then measured once for all."""
  workdir = pathlib.Path(workdir) if workdir else None
  if workdir is not None and (workdir / "result.json").exists():
    return json.loads((workdir / "result.json").read_text())
  prepared = prepare() if prepare else PreparedLMVictim(victim_dir, setup)
  prepared.check(victim_dir, setup)
  model, params, tokenizer, cfg = (prepared.model, prepared.params, prepared.tokenizer,
                                   prepared.cfg)
  _, pretrained = jax_attnalign.load_pretrained(cfg.model or str(bundled_smollm2_path()),
                                                task="causal_lm")
  evaluate, before = prepared.held_metrics, dict(prepared.before)
  start = time.perf_counter()
  after_params, after, report = defend(model, params, pretrained, tokenizer, cfg, evaluate,
                                       workdir)
  result = {"victim": str(victim_dir), "setup": dataclasses.asdict(setup), "before": before,
            "after": after, "detection": None,
            "report": {"rounds": [], **report, "seconds": time.perf_counter() - start}}
  return store_defense_result(result, workdir, model, after_params, tokenizer, state=state,
                              save_model=save_model)


def defend_lm_with_cleangen(victim_dir: str | pathlib.Path, setup: LMDefenseSetup,
                            config: CleanGenConfig,
                            workdir: str | pathlib.Path | None = None, *,
                            prepare: Callable[[], PreparedLMVictim] | None = None) -> dict:
  """The victim's held-out metrics with plain greedy decoding ('before') and with
  CleanGen decoding against the victim's pretrained checkpoint ('after'), and the
  share of generated tokens CleanGen replaced. Writes workdir/result.json (no
  checkpoint: the weights are unchanged); a finished run's result is returned."""

  def defend(model, params, pretrained, tokenizer, cfg, evaluate, workdir):
    reports = []

    def decode(prompts, max_new_tokens):
      texts, report = cleangen_responses(model, params, pretrained, tokenizer, prompts,
                                         config, max_new_tokens=max_new_tokens)
      reports.append(report)
      return texts

    after = evaluate(params, decode)
    replaced = sum(int(np.sum(r["replaced"])) for r in reports)
    generated = sum(int(np.sum(r["generated"])) for r in reports)
    return params, after, {"cleangen": dataclasses.asdict(config),
                           "replacement_rate": replaced / max(generated, 1)}

  return _baseline_run(victim_dir, setup, workdir, defend, save_model=False, state=(),
                       prepare=prepare)


def defend_lm_with_graceful(victim_dir: str | pathlib.Path, setup: LMDefenseSetup,
                            config: GraCeFulConfig,
                            workdir: str | pathlib.Path | None = None, *,
                            prepare: Callable[[], PreparedLMVictim] | None = None) -> dict:
  """GraCeFul's filter of the victim's training rows (gradients of the pretrained
  checkpoint), then the victim's recipe from that checkpoint on the kept rows.
  The filter's report counts the poisoned and clean rows it removed (the truth
  is only counted). Writes result.json, filter.npz (the kept rows, so an
  interrupted fine-tune resumes without refiltering) and the retrained model."""

  def defend(model, params, pretrained, tokenizer, cfg, evaluate, workdir):
    rows = victim_data(cfg)["train"]
    arrays = training_arrays(rows, cfg, tokenizer)
    saved = workdir / "filter.npz" if workdir else None
    if saved is not None and saved.exists():
      with np.load(saved, allow_pickle=False) as stored:
        keep, report = stored["keep"], json.loads(str(stored["report"]))
    else:
      keep, report = graceful_filter(model, pretrained, arrays, config,
                                     poisoned=np.array([e.poisoned for e in rows]))
      if saved is not None:
        write_npz(saved, keep=keep, report=json.dumps(report))
    retrained, history = fine_tune_lm(model, pretrained, {k: v[keep] for k, v in arrays.items()},
                                      cfg, workdir / "ckpt" if workdir else None)
    report.update(graceful=dataclasses.asdict(config), steps=len(history))
    return retrained, evaluate(retrained), {"filter": report}

  return _baseline_run(victim_dir, setup, workdir, defend, save_model=True, state=("ckpt",),
                       prepare=prepare)


def defend_lm_with_muscle_lora(victim_dir: str | pathlib.Path, setup: LMDefenseSetup,
                               config: MuScleLoRAConfig,
                               workdir: str | pathlib.Path | None = None, *,
                               prepare: Callable[[], PreparedLMVictim] | None = None) -> dict:
  """MuScleLoRA from the pretrained checkpoint on the victim's training rows,
  aligned to the defender's `setup.clean_size` clean rows; resumable per epoch.
  The report keeps the steps per alignment branch and the last losses."""

  def defend(model, params, pretrained, tokenizer, cfg, evaluate, workdir):
    arrays = training_arrays(victim_data(cfg)["train"], cfg, tokenizer)
    clean = training_arrays(defender_examples(cfg, setup)[:setup.clean_size], cfg, tokenizer)
    merged, report = muscle_lora(model, pretrained, arrays, clean, config,
                                 workdir=workdir / "muscle_lora" if workdir else None)
    summary = {"muscle_lora": dataclasses.asdict(config), "branches": report["branches"],
               "trainable_parameters": report["trainable_parameters"],
               "final_loss": float(np.mean(report["loss"][-10:])),
               "final_clean_loss": float(np.mean(report["clean_loss"][-10:]))}
    return merged, evaluate(merged), summary

  return _baseline_run(victim_dir, setup, workdir, defend, save_model=True,
                       state=("muscle_lora",), prepare=prepare)
