"""The decoder harness: Table 1 statistics and the defense on an LM victim.

  result = analyze_lm_victim("runs/lm_sst2/classification_badnets_seed0", VIEWS, workdir)
  result = defend_lm_victim("runs/lm_sst2/classification_badnets_seed0", LMDefenseSetup(),
                            SanitizeConfig(...), workdir, detector=DetectorConfig(...))

Every decoder statistic reads the model's own greedy answer teacher-forced after
its prompt (`answers.greedy_answers`): the generation-to-prompt view is the
answer tokens' rows over the prompt's columns (DESIGN.md). The victim's
result.json holds its config, from which its data are rebuilt:
  * the test prompts are split (seeded) into a monitored *stream* (clean and
    triggered, on distinct prompts) and a disjoint *held-out* part, on which
    ASR and CA / clean utility are measured before and after the defense;
  * the defender's clean fine-tuning rows and calibration prompts come from the
    clean training pool, outside the victim's own training subset;
  * after each round the suspects are re-read, by the paper detector's head
    statistic or (`LMDefenseSetup.rescore="answer_collapse"`, generation victims)
    by their re-decoded answers: the rounds stop once few still give the
    response their answers collapsed onto before the defense, or share another
    one; with `LMDefenseSetup.watch_share` the answers re-read are those of
    flagged prompts kept out of the suspects, which alignment was not fitted on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Callable, Literal

import jax
import numpy as np
from absl import logging

import jax_attnalign
from jax_attnalign import data, metrics, parallel, plots, validation
from jax_attnalign.analysis import head_similarity, pair_statistics, resolve_view
from jax_attnalign.answers import greedy_answers
from jax_attnalign.data.files import write_json
from jax_attnalign.defense.detector import (DetectorConfig, Threshold, clean_threshold,
                                           layer_statistics)
from jax_attnalign.defense.sanitize import SanitizeConfig, per_input, sanitize
from jax_attnalign.detection import DETECTORS, ChatVictim, calibrate, make_detector
from jax_attnalign.detection.collapse import (answer_token_sets, collapse_scores, kept_out,
                                              response_flagger, scores_in_sets)
from jax_attnalign.errors import InputError
from jax_attnalign.harness.pipeline import (split_stream, store_defense_result,
                                            stream_suspects)
from jax_attnalign.harness.victims import seeded_subset
from jax_attnalign.harness.victims_lm import (LMVictimConfig, chat_pairs, clean_splits,
                                              evaluate_lm_victim, training_arrays, victim_data)
from jax_attnalign.models import PATTERNS, attention_maps, run_with_hooks

STATISTICS = ("percentile", "frac_above", "mean")


def load_lm_victim(victim_dir: str | pathlib.Path, model_dir: str | pathlib.Path | None = None):
  """(model, params, tokenizer, LMVictimConfig) of a `train_lm_victim` run folder;
  `model_dir`: another checkpoint to load instead of the victim's (e.g. the clean
  reference, to read the victim's data through a model without the backdoor)."""
  victim_dir = pathlib.Path(victim_dir)
  fields = json.loads((victim_dir / "result.json").read_text())["config"]
  fields["attack_kwargs"] = tuple(tuple(kv) for kv in fields["attack_kwargs"])
  model_dir = model_dir or victim_dir / "model"
  model, params = jax_attnalign.load_pretrained(model_dir, task="causal_lm")
  return model, params, data.load_tokenizer(model_dir), LMVictimConfig(**fields)


def answer_inputs(model, params, tokenizer, examples: list, cfg: LMVictimConfig,
                  batch_size: int = 32) -> dict[str, np.ndarray]:
  """The examples' chat prompts with the model's own greedy answers (see
  `greedy_answers`); classification answers get 4 tokens."""
  tokens = 4 if cfg.task == "classification" else cfg.max_new_tokens
  return greedy_answers(model, params, tokenizer, [p for p, _ in chat_pairs(examples, cfg,
                                                                             tokenizer)],
                        max_new_tokens=tokens, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("model", "views"))
def _view_statistics(model, params, batch, views: tuple[str, ...]):
  _, captured = run_with_hooks(model, params, batch, capture=PATTERNS)
  maps = attention_maps(captured)  # [L, B, N, T, T]
  kw = dict(attention_mask=batch["attention_mask"], special_mask=batch["special_mask"],
            prompt_lengths=batch["prompt_lengths"], is_decoder=True)
  out = {}
  for view in views:
    layer = layer_statistics(head_similarity(maps, view, **kw))  # {stat: [B, L']}
    pooled = head_similarity(maps, view, scope="model", **kw)  # [B, L'N, L'N]
    out[view] = {"layer": layer, "pooled": {**pair_statistics(pooled),
                                            "mean": layer_statistics(pooled)["mean"]}}
  return out


def view_statistics(model, params, arrays: dict[str, np.ndarray], views: tuple[str, ...], *,
                    batch_size: int = 8) -> dict:
  """Per input, for each view: every statistic of the pairwise head cosines
  within each viewed layer ({'layer': {stat: [n, L']}}) and over all viewed heads
  of the model pooled ({'pooled': {stat: [n]}}). Statistics: 'percentile' (99th),
  'frac_above' (share of pairs above 0.99), 'mean'."""
  keep = ("input_ids", "attention_mask", "special_mask", "prompt_lengths")
  return per_input(lambda b: _view_statistics(model, params, b, tuple(views)),
                   {k: arrays[k] for k in keep}, batch_size, parallel.data_mesh())


def analyze_lm_victim(victim_dir: str | pathlib.Path, views: tuple[str, ...],
                      workdir: str | pathlib.Path, *, size: int = 200,
                      model_dir: str | pathlib.Path | None = None) -> dict:
  """Table 1 / Figure 1 on a decoder victim: for `size` clean and `size` triggered
  test prompts, each view's statistics (clean mean, triggered mean, AUROC of
  triggered vs clean) pooled over the model's heads and per layer, and the AUROC
  of the detector's score (the per-layer statistic averaged over layers). `model_dir`
  reads the victim's data through another model (see `load_lm_victim`). Writes
  analysis.json and per-layer plots to `workdir`; returns the dict."""
  workdir = pathlib.Path(workdir)
  if (workdir / "analysis.json").exists():
    return json.loads((workdir / "analysis.json").read_text())
  model, params, tokenizer, cfg = load_lm_victim(victim_dir, model_dir)
  sets = victim_data(cfg)
  inputs = [answer_inputs(model, params, tokenizer, sets[name][:size], cfg)
            for name in ("clean", "triggered")]
  stats = [view_statistics(model, params, arrays, views) for arrays in inputs]
  truth = np.r_[np.zeros(len(inputs[0]["input_ids"]), bool),
                np.ones(len(inputs[1]["input_ids"]), bool)]
  out = {"victim": str(victim_dir), "model": str(model_dir or pathlib.Path(victim_dir) / "model"),
         "task": cfg.task, "attack": cfg.attack, "seed": cfg.seed,
         "clean_inputs": int((~truth).sum()), "triggered_inputs": int(truth.sum()), "views": {}}
  for view in views:
    out["views"][view] = {}
    for statistic in STATISTICS:
      pooled = np.r_[stats[0][view]["pooled"][statistic], stats[1][view]["pooled"][statistic]]
      layers = np.concatenate([stats[0][view]["layer"][statistic],
                               stats[1][view]["layer"][statistic]])
      out["views"][view][statistic] = {
          "clean": float(pooled[~truth].mean()), "triggered": float(pooled[truth].mean()),
          "auroc": metrics.detection_auroc(pooled, truth),
          # The detector's score (detector.input_scores): the layers' statistic averaged.
          "auroc_layer_mean": metrics.detection_auroc(layers.mean(1), truth),
          "clean_per_layer": layers[~truth].mean(0).tolist(),
          "triggered_per_layer": layers[truth].mean(0).tolist(),
          "auroc_per_layer": [metrics.detection_auroc(layers[:, i], truth)
                              for i in range(layers.shape[1])]}
      if statistic == STATISTICS[0]:
        plots.plot_clean_vs_triggered(layers[~truth], layers[truth],
                                      workdir / f"{view}_{statistic}.png",
                                      layers=resolve_view(view).layer_indices(
                                          model.config.num_layers),
                                      ylabel=plots.STATISTIC_LABELS[statistic],
                                      title=f"{cfg.task} {cfg.attack}: {view}")
  workdir.mkdir(parents=True, exist_ok=True)
  write_json(workdir / "analysis.json", out)
  return out


@dataclasses.dataclass(frozen=True)
class LMDefenseSetup:
  """How the suspects are chosen and what the defender holds, for an LM victim."""
  suspects: Literal["detector", "oracle"] = "detector"
  # Which input detector (of jax_attnalign.detection, default settings, read on a
  # `ChatVictim`) flags the stream for 'detector' suspects, fitted on the
  # defender's clean fine-tuning prompts and calibrated on its calibration
  # prompts; the paper's (the detector config's view and statistic) always sets
  # the rounds' stopping threshold.
  detector: str = "paper"
  stream_clean: int = 60  # clean test prompts in the monitored stream
  stream_triggered: int = 40  # triggered test prompts (other prompts) in the stream
  max_suspects: int = 32
  # The defender's clean fine-tuning rows (outside the victim's): 200 keeps a round
  # of the head-wise fine-tune to minutes on a 2-core CPU (set before any result).
  clean_size: int = 200
  calibration_size: int = 200  # clean training prompts calibrating the detector
  eval_size: int = 100  # held-out clean and triggered prompts each (0: all the rest)
  seed: int = 0
  # What re-reads the suspects after each round for the stop rule: 'paper' (the
  # detector config's head statistic and its calibrated threshold) or
  # 'answer_collapse' (generation victims: the suspects' answers decoded again and
  # matched against the responses they collapsed onto before the defense,
  # `collapse_flagger`).
  rescore: Literal["paper", "answer_collapse"] = "paper"
  # With rescore='answer_collapse': the share of the flagged stream prompts (of
  # its triggered ones, for oracle suspects) kept out of the suspects, drawn at
  # random (seeded), whose answers the stop re-reads; 0: it re-reads the
  # suspects', which alignment was fitted on and which overstate the repair.
  watch_share: float = 0.0

  def __post_init__(self):
    validation.choice("LMDefenseSetup.suspects", self.suspects, ("detector", "oracle"))
    validation.choice("LMDefenseSetup.detector", self.detector, tuple(sorted(DETECTORS)))
    validation.choice("LMDefenseSetup.rescore", self.rescore, ("paper", "answer_collapse"))
    if not 0.0 <= self.watch_share < 1.0:
      raise InputError(f"LMDefenseSetup.watch_share must be in [0, 1), got {self.watch_share}.")
    if self.watch_share and self.rescore != "answer_collapse":
      raise InputError("LMDefenseSetup.watch_share keeps prompts out of the suspects for "
                       "the answer-collapse stop to re-read; set rescore='answer_collapse' "
                       "or watch_share=0.")


def stream_and_held(cfg: LMVictimConfig, setup: LMDefenseSetup) -> dict[str, tuple]:
  """{'clean', 'triggered'}: (stream examples, held-out examples), the victim's test
  examples of each kind split (seeded) into the monitored stream and the held-out part."""
  sets, parts = victim_data(cfg), {}
  for name, first, offset in (("clean", setup.stream_clean, 0),
                              ("triggered", setup.stream_triggered, 1)):
    stream, held = split_stream(
        sets[name], first, setup.seed + offset,
        describe=f"The victim has {{n}} {name} test prompts",
        fix="Train the victim with a larger --test_size (0: all), or lower "
        f"--config.setup.stream_{name} (LMDefenseSetup.stream_{name}).")
    parts[name] = (stream, held[:setup.eval_size or None])
  return parts


def defender_examples(cfg: LMVictimConfig, setup: LMDefenseSetup) -> list:
  """The defender's clean rows: `setup.clean_size` fine-tuning rows, then
  `setup.calibration_size` calibration prompts, drawn (seeded) from the clean
  training pool outside the victim's own training subset."""
  pool, _ = clean_splits(cfg)
  _, victim_rows = seeded_subset(pool, cfg.train_size, cfg.seed)
  free = np.setdiff1d(np.random.default_rng(setup.seed + 2).permutation(len(pool)),
                      victim_rows, assume_unique=True)
  need = setup.clean_size + setup.calibration_size
  if need > len(free):
    raise ValueError(f"clean_size + calibration_size = {need} exceeds the {len(free)} clean "
                     "training rows the victim did not train on.")
  return [pool[i] for i in free[:need]]


def lm_defense_data(model, params, tokenizer, cfg: LMVictimConfig,
                    setup: LMDefenseSetup) -> dict:
  """{'stream': answer inputs of the stream with 'poisoned', 'clean_train': encoded
  clean fine-tuning rows, 'calibration': answer inputs of clean training prompts,
  'examples': the examples of 'stream', 'clean_train' and 'calibration'}. The
  stream is the first part of the seeded split of `stream_and_held`."""
  defender = defender_examples(cfg, setup)
  parts = stream_and_held(cfg, setup)
  examples = {"stream": parts["clean"][0] + parts["triggered"][0],
              "clean_train": defender[:setup.clean_size],
              "calibration": defender[setup.clean_size:]}
  stream = answer_inputs(model, params, tokenizer, examples["stream"], cfg)
  stream["poisoned"] = np.arange(len(stream["input_ids"])) >= len(parts["clean"][0])
  return {"stream": stream,
          "clean_train": training_arrays(examples["clean_train"], cfg, tokenizer),
          "calibration": answer_inputs(model, params, tokenizer, examples["calibration"], cfg),
          "examples": examples}


def chat_victim(model, params, tokenizer, cfg: LMVictimConfig, batch_size: int) -> ChatVictim:
  """The victim as input detectors read it: a chat classifier of its dataset, or a
  generation victim (no classes) answering with its `max_new_tokens`."""
  kind = ({"dataset": cfg.dataset} if cfg.task == "classification" else
          {"dataset": None, "answer_tokens": cfg.max_new_tokens})
  return ChatVictim(model, params, tokenizer, batch_size=batch_size, **kind)


def input_detector_scores(model, params, tokenizer, cfg: LMVictimConfig, sets: dict,
                          name: str, fpr: float, batch_size: int) -> tuple[np.ndarray, object]:
  """The stream's scores under input detector `name` (read on a `ChatVictim`),
  fitted on the defender's clean fine-tuning prompts and calibrated at `fpr` on
  its calibration prompts (`sets` of `lm_defense_data`, whose decoded answers of
  the stream and calibration prompts it reuses), and that calibration."""
  victim, examples = chat_victim(model, params, tokenizer, cfg, batch_size), sets["examples"]
  victim.keep_answers(examples["stream"],
                      {k: v for k, v in sets["stream"].items() if k != "poisoned"})
  victim.keep_answers(examples["calibration"], sets["calibration"])
  method = make_detector(name).fit(victim, examples["clean_train"])
  calibration = calibrate(method, victim, examples["calibration"], fpr)
  return np.asarray(method.score(victim, examples["stream"]), np.float64), calibration


def choose_lm_suspects(model, params, tokenizer, cfg: LMVictimConfig, sets: dict,
                       setup: LMDefenseSetup, config: DetectorConfig,
                       batch_size: int) -> tuple[dict, dict, dict, object]:
  """(suspects, watched, detection report, detector) of `pipeline.stream_suspects`
  on the stream's answer inputs (`sets` of `lm_defense_data`), both unlabelled; an
  input detector other than the paper's is read on a `ChatVictim`
  (`input_detector_scores`). watched: the `setup.watch_share` of the flagged
  prompts (of the triggered ones, for oracle suspects) drawn at random and kept
  out of the suspects, which are the rest, highest scores first, at most
  `setup.max_suspects`; empty arrays when watch_share is 0."""
  stream = sets["stream"]
  pool, _, report, detector = stream_suspects(
      model, params, sets, dataclasses.replace(setup, max_suspects=len(stream["poisoned"])),
      config, batch_size,
      lambda: input_detector_scores(model, params, tokenizer, cfg, sets, setup.detector,
                                    config.fpr, batch_size))
  kept = kept_out(len(pool), setup.watch_share, setup.seed)
  chosen, watched = pool[~kept][:setup.max_suspects], pool[kept]
  truth = stream["poisoned"]
  report.update(suspects=int(len(chosen)), suspects_triggered=int(truth[chosen].sum()),
                watched=int(len(watched)), watched_triggered=int(truth[watched].sum()))
  unlabelled = lambda idx: {k: v[idx] for k, v in stream.items() if k != "poisoned"}
  return unlabelled(chosen), unlabelled(watched), report, detector


def collapse_flagger(model, tokenizer, suspects: dict[str, np.ndarray],
                     watched: dict[str, np.ndarray], calibration: dict[str, np.ndarray],
                     cfg: LMVictimConfig, fpr: float, batch_size: int) -> tuple[Callable, dict]:
  """(flag for `sanitize`'s stop, its record). The flagged prompts' answers
  before the defense (the suspects' and the `watched` ones', answer inputs of
  the stream) are scored by `collapse_scores` against a threshold that flags
  `fpr` of clean prompts' answers (`calibration`, scored in sets as large: the
  score is a share of the set); the answers it flags are the backdoor's
  responses as the stream shows them. After a round the watched prompts'
  answers (the suspects' when none is watched) are decoded again and flagged
  where they are a near-duplicate of one of those responses or of another
  re-read answer (`still_triggered`): the response is still given, or another
  one shared in its place. The record: the threshold, the share of the flagged
  prompts' answers it flags before any round, the number of distinct responses
  watched for, and which prompts are re-read and how many."""
  if cfg.task == "classification":
    raise InputError("rescore='answer_collapse' reads a generation victim's answers; a "
                     "classifier answers with a label word. Use rescore='paper'.")
  flagged = {k: np.concatenate([suspects[k], watched[k]]) for k in suspects}
  n, total = len(flagged["input_ids"]), len(calibration["input_ids"])
  if n < 2 or total < 2 * n:
    raise InputError(f"rescore='answer_collapse' needs at least 2 flagged prompts and twice "
                     f"as many calibration prompts (got {n} and {total}); raise "
                     "LMDefenseSetup.calibration_size.")
  threshold = Threshold(**clean_threshold(scores_in_sets(calibration, n), fpr,
                                          where="collapse_flagger"))
  before = threshold.flag(collapse_scores(flagged))
  responses = sorted({answer for answer, hit in zip(answer_token_sets(flagged), before) if hit},
                     key=sorted)
  reread, which = ((watched, "watched") if len(watched["input_ids"]) else
                   (suspects, "suspects"))
  flag = response_flagger(model, tokenizer, reread, responses,
                          max_new_tokens=cfg.max_new_tokens, batch_size=batch_size)
  return flag, {**dataclasses.asdict(threshold), "flagged_before": float(before.mean()),
                "responses": len(responses), "reread": which,
                "reread_count": len(reread["input_ids"])}


def held_metrics(model, params, tokenizer, held: dict[str, list], cfg: LMVictimConfig,
                 decode: Callable | None = None) -> dict:
  """`evaluate_lm_victim`'s metrics on the held-out examples, without its example
  responses: what a defense's result records before and after."""
  return {k: v for k, v in evaluate_lm_victim(model, params, tokenizer, held, cfg,
                                              decode).items() if k != "examples"}


class PreparedLMVictim:
  """A victim loaded once for every defense of it under one setup (the setup's
  `suspects` and `detector` do not enter): model, params, tokenizer, config, the
  held-out examples, and, each computed on first use, `before` (the held-out
  metrics before any defense) and `sets` (`lm_defense_data`, which only our
  method reads). Handed to `defend_lm_victim` and the baselines so that all the
  variants run on one victim load, decode and measure it once."""

  def __init__(self, victim_dir: str | pathlib.Path, setup: LMDefenseSetup):
    self.victim_dir, self.setup = str(victim_dir), setup
    self.model, self.params, self.tokenizer, self.cfg = load_lm_victim(victim_dir)
    self.held = {name: held for name, (_, held) in stream_and_held(self.cfg, setup).items()}

  @functools.cached_property
  def before(self) -> dict:
    return self.held_metrics(self.params)

  @functools.cached_property
  def sets(self) -> dict:
    return lm_defense_data(self.model, self.params, self.tokenizer, self.cfg, self.setup)

  def held_metrics(self, params, decode: Callable | None = None) -> dict:
    """The held-out metrics of `params` (the victim's or a defended copy), answers
    from `decode(prompts, max_new_tokens)` if given (`evaluate_lm_victim`)."""
    return held_metrics(self.model, params, self.tokenizer, self.held, self.cfg, decode)

  def check(self, victim_dir: str | pathlib.Path, setup: LMDefenseSetup):
    """Raises ValueError unless this is `victim_dir` prepared under `setup`."""
    if self.victim_dir != str(victim_dir) or dataclasses.replace(
        self.setup, suspects=setup.suspects, detector=setup.detector) != setup:
      raise ValueError(f"The prepared victim ({self.victim_dir}, {self.setup}) is not "
                       f"{victim_dir} under {setup}; prepare it with "
                       "PreparedLMVictim(victim_dir, setup).")


def defend_lm_victim(victim_dir: str | pathlib.Path, setup: LMDefenseSetup,
                     config: SanitizeConfig, workdir: str | pathlib.Path | None = None, *,
                     detector: DetectorConfig,
                     prepare: Callable[[], PreparedLMVictim] | None = None) -> dict:
  """Detect suspects in the stream with `detector` (a decoder's view, e.g.
  gen_to_prompt), sanitise with the causal-LM loss, measure the
  held-out metrics before and after, export the sanitised model with its
  tokenizer to workdir/model. Returns (and writes) the result dict; a finished
  run's result.json is returned as is, an interrupted one resumes. `prepare`:
  returns the victim prepared for this setup (e.g. a cached `PreparedLMVictim`
  shared by several variants), called only when the run is not finished."""
  if config.finetune.loss != "causal_lm":
    raise ValueError("An LM victim is sanitised with loss='causal_lm'.")
  workdir = pathlib.Path(workdir) if workdir else None
  if workdir is not None and (workdir / "result.json").exists():
    return json.loads((workdir / "result.json").read_text())
  prepared = prepare() if prepare else PreparedLMVictim(victim_dir, setup)
  prepared.check(victim_dir, setup)
  model, params, tokenizer, sets = (prepared.model, prepared.params, prepared.tokenizer,
                                    prepared.sets)
  before = dict(prepared.before)
  suspects, watched, detection, calibrated = choose_lm_suspects(
      model, params, tokenizer, prepared.cfg, sets, setup, detector, config.score_batch_size)
  logging.info("before: %s; detection: %s", before, detection)
  result = {"victim": str(victim_dir), "setup": dataclasses.asdict(setup),
            "before": before, "detection": detection}
  if detection["suspects"] == 0:
    result.update(after=before, report={"stopped": "no_suspects", "rounds": []})
  else:
    flag_after_round = None
    if setup.rescore == "answer_collapse":
      flag_after_round, result["rescore"] = collapse_flagger(
          model, tokenizer, suspects, watched, sets["calibration"], prepared.cfg, detector.fpr,
          config.score_batch_size)
    start = time.perf_counter()
    params, report = sanitize(model, params, suspects, sets["clean_train"], config,
                              detector=calibrated, flag_after_round=flag_after_round,
                              workdir=workdir / "sanitize" if workdir else None)
    # Of this call: a resumed run's seconds count only what was left.
    report["seconds"] = time.perf_counter() - start
    result.update(after=prepared.held_metrics(params), report=report)
  return store_defense_result(result, workdir, model, params, tokenizer, state=("sanitize",))
