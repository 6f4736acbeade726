"""The defense end to end on a backdoored classifier: detect, sanitise, measure.

  result = defend_victim(DefenseSetup(victim="runs/badnets_seed0/model"),
                         SanitizeConfig(), workdir="runs/defend")

The test split is divided (seeded) into a *stream* that the deployed model sees
(clean and triggered inputs mixed; the detector picks the suspects from it, or
the triggered ones are handed over as oracle suspects) and a disjoint *held-out*
part on which CA and ASR are measured before and after sanitisation. The
defender's clean data (fine-tuning and detector calibration) is drawn from the
clean training split. Only clean data and the suspects are used: no trigger
knowledge, no labels of the suspects (their importance labels are the model's
own predictions by default). The paper's baselines run on the same victims,
defender data and held-out sets (`defend_with_baseline`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Callable, Literal, Sequence

import numpy as np
from absl import logging

import jax_attnalign
from jax_attnalign import attacks, data, metrics, plots, train, validation
from jax_attnalign.analysis import resolve_view
from jax_attnalign.baselines import BASELINES, CHECKPOINTS
from jax_attnalign.data.files import write_json
from jax_attnalign.defense.detector import DetectorConfig
from jax_attnalign.defense.restarts import RestartConfig, sanitize_restarts
from jax_attnalign.defense.sanitize import SanitizeConfig, calibrated_detector, scores_of
from jax_attnalign.detection import DETECTORS, Calibration, Victim, calibrate, make_detector
from jax_attnalign.harness.victims import finish_run


@dataclasses.dataclass(frozen=True)
class DefenseSetup:
  """Which victim, which data, and how the suspects are chosen."""
  victim: str  # the backdoored classifier's checkpoint directory (HF format)
  tokenizer: str = ""  # "" = the victim directory, else the bundled MiniLM's
  data_dir: str = "sst2/clean"  # relative: under the data root (data.resolve_data_path)
  dataset: str = "sst2"
  attack: str = "badnets"
  attack_kwargs: tuple[tuple[str, Any], ...] = ()
  target: int = 1
  suspects: Literal["detector", "oracle"] = "detector"
  # Which input detector (of jax_attnalign.detection, default settings) flags the
  # stream for 'detector' suspects, fitted on the defender's clean rows; the paper's
  # (the DetectorConfig) also sets the rounds' stopping threshold either way.
  detector: str = "paper"
  stream_clean: int = 200  # clean test inputs in the monitored stream
  stream_triggered: int = 100  # triggered test inputs in the monitored stream
  max_suspects: int = 64  # the highest-scoring flagged inputs (oracle: the first ones)
  clean_size: int = 500  # the defender's clean fine-tuning rows (training split)
  calibration_size: int = 200  # clean training rows calibrating the detector
  eval_size: int = 0  # held-out clean and triggered inputs measured (0: all the rest)
  max_length: int = 64
  seed: int = 0

  def __post_init__(self):
    validation.choice("DefenseSetup.suspects", self.suspects, ("detector", "oracle"))
    validation.choice("DefenseSetup.detector", self.detector, tuple(sorted(DETECTORS)))


def _tokenizer_path(setup: DefenseSetup) -> str:
  if setup.tokenizer:
    return setup.tokenizer
  victim = pathlib.Path(setup.victim)
  if not any((victim / f).exists() for f in ("tokenizer.json", "vocab.txt",
                                            "tokenizer.model")):
    raise FileNotFoundError(f"{victim} holds no tokenizer; set DefenseSetup.tokenizer to "
                            "the directory or hub id of the model it was fine-tuned from.")
  return str(victim)


def _split(examples: list, first: int, seed: int) -> tuple[list, list]:
  order = np.random.default_rng(seed).permutation(len(examples))
  return ([examples[i] for i in order[:first]], [examples[i] for i in order[first:]])


def split_stream(examples: list, first: int, seed: int, *, describe: str,
                 fix: str) -> tuple[list, list]:
  """(monitored stream, held-out part): the first `first` of a seeded permutation
  and the rest. A ValueError unless some are left to hold out, saying what there
  is (`describe`, with {n} for the count) and the `fix`."""
  if len(examples) <= first:
    raise ValueError(f"{describe.format(n=len(examples))}; the monitored stream takes "
                     f"{first} and the held-out measurement needs the rest. {fix}")
  return _split(examples, first, seed)


def defense_examples(setup: DefenseSetup) -> dict[str, list]:
  """The examples of `defense_data`'s sets, before encoding (seeded)."""
  folder = data.resolve_data_path(setup.data_dir, missing_ok=True)
  test = data.load_classification(folder, "test", dataset=setup.dataset)
  attack = attacks.make_attack(setup.attack, **{
      "target": setup.target, "seed": setup.seed, **dict(setup.attack_kwargs)})
  triggered = attack.triggered_test(test)
  (stream_clean, held_clean), (stream_trig, held_trig) = (
      split_stream(rows, first, setup.seed + offset,
                   describe=f"{setup.data_dir} gives {{n}} {name} test inputs",
                   fix=f"Lower --config.setup.stream_{name} (DefenseSetup.stream_{name}), or "
                   "use a larger test split.")
      for name, rows, first, offset in (("clean", test, setup.stream_clean, 0),
                                        ("triggered", triggered, setup.stream_triggered, 1)))
  train_rows = data.load_classification(folder, "train", dataset=setup.dataset)
  needed = setup.clean_size + setup.calibration_size
  if needed > len(train_rows):
    raise ValueError(f"clean_size + calibration_size = {needed} exceeds the "
                     f"{len(train_rows)} clean training rows of {setup.data_dir}.")
  defender, _ = _split(train_rows, needed, setup.seed + 2)
  held = slice(None, setup.eval_size or None)
  return {"stream": stream_clean + stream_trig, "held_clean": held_clean[held],
          "held_triggered": held_trig[held], "clean_train": defender[:setup.clean_size],
          "calibration": defender[setup.clean_size:]}


def defense_data(setup: DefenseSetup, tokenizer,
                 rows: dict[str, list] | None = None) -> dict[str, dict[str, np.ndarray]]:
  """Encoded 'stream' (with 'poisoned' marking triggered rows), 'held_clean',
  'held_triggered', 'clean_train' and 'calibration' sets: `rows`, by default
  `defense_examples(setup)`."""
  rows = defense_examples(setup) if rows is None else rows
  return {name: data.encode_classification(examples, tokenizer, setup.max_length)
          for name, examples in rows.items()}


def evaluate(model, params, sets: dict, target: int) -> dict[str, float]:
  """CA on the held-out clean inputs, ASR on the held-out triggered ones."""
  logging.info("Measuring CA on %d held-out clean and ASR on %d held-out triggered inputs.",
               len(sets["held_clean"]["labels"]), len(sets["held_triggered"]["labels"]))
  predict = lambda arrays: train.predict_logits(model, params, arrays).argmax(-1)
  return {"ca": metrics.clean_accuracy(predict(sets["held_clean"]),
                                       sets["held_clean"]["labels"]),
          "asr": metrics.attack_success_rate(predict(sets["held_triggered"]),
                                             sets["held_triggered"]["labels"], target)}


def _detection_scores(model, params, tokenizer, rows: dict[str, list], setup: DefenseSetup,
                      fpr: float, batch_size: int) -> tuple[np.ndarray, Calibration]:
  """The stream's scores under `setup.detector` (of `detection.DETECTORS`), fitted
  on the defender's clean fine-tuning rows and calibrated at `fpr` on its
  calibration rows (`rows`: `defense_examples`), and that calibration."""
  victim = Victim(model, params, tokenizer, setup.max_length, batch_size)
  method = make_detector(setup.detector).fit(victim, rows["clean_train"])
  calibration = calibrate(method, victim, rows["calibration"], fpr)
  return np.asarray(method.score(victim, rows["stream"]), np.float64), calibration


def stream_suspects(model, params, sets: dict, setup, config: DetectorConfig, batch_size: int,
                    input_scores: Callable[[], tuple[np.ndarray, Any]]
                    ) -> tuple[np.ndarray, np.ndarray, dict, Any]:
  """(chosen, flagged, detection report, detector) for the encoded monitored stream
  `sets["stream"]` (with its `poisoned` truth, used only for the report and the
  oracle). The detector of `config` is calibrated on `sets["calibration"]`; it sets
  the rounds' stopping threshold. The stream is scored by it when `setup.detector`
  is 'paper', else by `input_scores()` -> (scores, calibration). chosen: the
  flagged stream indices, highest scores first, or the triggered ones ('oracle'),
  at most `setup.max_suspects`; flagged: a boolean mask of the stream."""
  logging.info("Detector: calibrating on %d clean inputs, scoring the %d stream inputs.",
               len(sets["calibration"]["input_ids"]), len(sets["stream"]["input_ids"]))
  detector = calibrated_detector(model, params, sets["calibration"], config,
                                 batch_size=batch_size)
  stream = sets["stream"]
  if setup.detector == "paper":
    scores = scores_of(model, params, stream, config.view, config.statistic,
                       batch_size=batch_size)
    threshold = detector
  else:
    scores, threshold = input_scores()
  flagged = threshold.flag(scores)
  truth = stream["poisoned"]
  report = {"detector": setup.detector, "auroc": metrics.detection_auroc(scores, truth),
            "flagged": int(flagged.sum()), "true_positive_rate": float(flagged[truth].mean()),
            "false_positive_rate": float(flagged[~truth].mean()),
            "threshold": threshold.threshold}
  if setup.suspects == "oracle":
    chosen = np.flatnonzero(truth)[:setup.max_suspects]
  else:
    flagged_idx = np.flatnonzero(flagged)
    chosen = flagged_idx[np.argsort(-scores[flagged_idx])][:setup.max_suspects]
  report.update(suspects=int(len(chosen)),
                suspects_triggered=int(truth[chosen].sum()) if len(chosen) else 0)
  return chosen, flagged, report, detector


def choose_suspects(model, params, tokenizer, rows: dict[str, list], sets: dict,
                    setup: DefenseSetup, config: DetectorConfig,
                    batch_size: int) -> tuple[dict, dict, dict, Any]:
  """(suspects, flagged, detection report, detector) of `stream_suspects`, as
  unlabelled stream inputs; `rows` and `sets`: the examples of `defense_examples`
  and their encoding; another detector than the paper's is fitted and calibrated
  on `rows` (`_detection_scores`). flagged: every flagged stream input (the
  suspects when none is flagged)."""
  chosen, flagged, report, detector = stream_suspects(
      model, params, sets, setup, config, batch_size,
      lambda: _detection_scores(model, params, tokenizer, rows, setup, config.fpr, batch_size))
  unlabelled = lambda idx: {k: v[idx] for k, v in sets["stream"].items()
                            if k not in ("labels", "poisoned")}
  watch = np.flatnonzero(flagged) if flagged.any() else chosen
  return unlabelled(chosen), unlabelled(watch), report, detector


def _victim_and_data(setup: DefenseSetup) -> tuple:
  """(model, params, tokenizer, examples of `defense_examples`, their encoded sets,
  CA/ASR before any defense)."""
  model, params = jax_attnalign.load_pretrained(setup.victim, task="classification")
  tokenizer = data.load_tokenizer(_tokenizer_path(setup))
  rows = defense_examples(setup)
  sets = defense_data(setup, tokenizer, rows)
  return model, params, tokenizer, rows, sets, evaluate(model, params, sets, setup.target)


def _sizes(sets: dict) -> dict[str, int]:
  return {name: len(arrays["input_ids"]) for name, arrays in sets.items()}


def defend_victim(setup: DefenseSetup, config: SanitizeConfig = SanitizeConfig(),
                  workdir: str | pathlib.Path | None = None, *,
                  detector: DetectorConfig = DetectorConfig(),
                  restarts: RestartConfig = RestartConfig()) -> dict:
  """Detect suspects (with `detector`), sanitise (`config`, `restarts`), and
  measure; returns (and writes) the result dict:
  'before' and 'after' (CA on 'held_clean', ASR on 'held_triggered'), 'detection'
  (on the 'stream'), the sanitisation 'report', 'inputs', each set's size, and
  'wall_s', the seconds from the detector's calibration to the sanitised model.

  With `workdir` an existing result.json is returned as is, and an interrupted
  sanitisation resumes from its checkpoint there.
  """
  workdir = pathlib.Path(workdir) if workdir else None
  if workdir is not None and (workdir / "result.json").exists():
    return json.loads((workdir / "result.json").read_text())
  model, params, tokenizer, rows, sets, before = _victim_and_data(setup)
  start = time.perf_counter()
  suspects, flagged, detection, calibrated = choose_suspects(
      model, params, tokenizer, rows, sets, setup, detector, config.score_batch_size)
  logging.info("before: %s; detection: %s", before, detection)
  result = {"setup": dataclasses.asdict(setup), "before": before, "detection": detection,
            "inputs": _sizes(sets)}
  if detection["suspects"] == 0:
    result.update(report={"stopped": "no_suspects", "rounds": []},
                  wall_s=time.perf_counter() - start, after=before)
  else:
    params, report = sanitize_restarts(model, params, suspects, sets["clean_train"], flagged,
                                       sets["calibration"], config, restarts=restarts,
                                       detector=calibrated,
                                       workdir=workdir / "sanitize" if workdir else None)
    result.update(report=report, wall_s=time.perf_counter() - start,
                  after=evaluate(model, params, sets, setup.target))
  return store_defense_result(result, workdir, model, params, tokenizer, state=("sanitize",))


def defend_with_baseline(setup: DefenseSetup, baseline: str,
                         workdir: str | pathlib.Path | None = None, config=None) -> dict:
  """A baseline of `baselines.BASELINES` ('fine_pruning', 'meft', 'pure'; `config`
  its config, default the baseline's) on the victim of `setup`, with the same
  defender data and held-out sets as `defend_victim`: it fine-tunes on
  'clean_train' and validates on 'calibration' (clean labelled rows; no suspects).

  Returns (and writes, with the defended checkpoint) the result dict: 'baseline',
  'config', 'before', 'after', the baseline's 'report', 'inputs' and 'wall_s'
  (the baseline's seconds). With `workdir` an existing result.json is returned
  as is, and an interrupted baseline resumes from its checkpoints there.
  """
  workdir = pathlib.Path(workdir) if workdir else None
  if workdir is not None and (workdir / "result.json").exists():
    return json.loads((workdir / "result.json").read_text())
  if baseline not in BASELINES:
    raise ValueError(f"baseline must be one of {sorted(BASELINES)}, got {baseline!r}.")
  defend, config_cls = BASELINES[baseline]
  config = config_cls() if config is None else config
  model, params, tokenizer, _, sets, before = _victim_and_data(setup)
  logging.info("before: %s; %s on %d clean training and %d validation rows.", before,
               baseline, len(sets["clean_train"]["labels"]), len(sets["calibration"]["labels"]))
  start = time.perf_counter()
  params, report = defend(model, params, sets["clean_train"], sets["calibration"], config,
                          workdir=workdir / baseline if workdir else None)
  result = {"setup": dataclasses.asdict(setup), "baseline": baseline,
            "config": dataclasses.asdict(config), "before": before, "report": report,
            "inputs": _sizes(sets), "wall_s": time.perf_counter() - start,
            "after": evaluate(model, params, sets, setup.target)}
  return store_defense_result(result, workdir, model, params, tokenizer, save_model=True,
                              state=[f"{baseline}/{d}" for d in CHECKPOINTS])


def store_defense_result(result: dict, workdir: pathlib.Path | None, model, params,
                         tokenizer, *, state: Sequence[str],
                         save_model: bool | None = None) -> dict:
  """Logs the result's 'after' and, with `workdir`: when the defense changed the
  model (`save_model`; by default: a 'report' with rounds), saves the defended
  checkpoint with its tokenizer to workdir/model, then finishes the run
  (`victims.finish_run`: result.json, and the training state `state` deleted).
  Returns `result`."""
  logging.info("after: %s", result["after"])
  if workdir is not None:
    if result["report"]["rounds"] if save_model is None else save_model:
      jax_attnalign.save_pretrained(model, params, workdir / "model", tokenizer=tokenizer)
    finish_run(workdir, result, state)
  return result


def analyze_victim(setup: DefenseSetup, views: list[str], statistics: list[str],
                   workdir: str | pathlib.Path, batch_size: int = 32) -> dict:
  """Figure 1 / Table 1: per view and statistic, the clean and triggered inputs'
  mean (per layer too) and the per-input detection AUROC, on the stream inputs
  (`setup.stream_clean` clean, `setup.stream_triggered` triggered). Writes
  analysis.json and a clean-vs-triggered plot per view to `workdir`."""
  workdir = pathlib.Path(workdir)
  model, params = jax_attnalign.load_pretrained(setup.victim, task="classification")
  stream = defense_data(setup, data.load_tokenizer(_tokenizer_path(setup)))["stream"]
  truth = stream["poisoned"]
  out = {"setup": dataclasses.asdict(setup), "clean_inputs": int((~truth).sum()),
         "triggered_inputs": int(truth.sum()), "views": {}}
  for view in views:
    logging.info("Head similarity of the %d stream inputs in the %s view.", len(truth), view)
    out["views"][view] = {}
    per_statistic = scores_of(model, params, stream, view, tuple(statistics),
                              batch_size=batch_size, per_layer=True)  # {stat: [n, L']}
    for statistic, layers in per_statistic.items():
      scores = layers.mean(axis=-1)
      out["views"][view][statistic] = {
          "clean": float(scores[~truth].mean()), "triggered": float(scores[truth].mean()),
          "auroc": metrics.detection_auroc(scores, truth),
          "clean_per_layer": layers[~truth].mean(0).tolist(),
          "triggered_per_layer": layers[truth].mean(0).tolist()}
      if statistic == statistics[0]:
        plots.plot_clean_vs_triggered(
            layers[~truth], layers[truth], workdir / f"{view}_{statistic}.png",
            layers=resolve_view(view).layer_indices(model.config.num_layers),
            ylabel=plots.STATISTIC_LABELS.get(statistic, statistic),
            title=f"{setup.attack}: {view}")
  workdir.mkdir(parents=True, exist_ok=True)
  write_json(workdir / "analysis.json", out)
  return out
