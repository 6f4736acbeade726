"""The model owner's question: is this checkpoint backdoored, and if so, clean it.

  result = audit_checkpoint("suspect/model", clean, incoming, out_dir="audit")
  print(result.verdict.line())

`clean` are rows the owner trusts (classifier: `TextExample`s with labels;
decoder: `InstructionExample`s with reference responses); `incoming` the texts
the deployed model received (classifier inputs, or user prompts of a chat
model). The clean rows are split (seeded): a *held-out* part measures the
detector's false-positive rate and, for classifiers, clean accuracy before and
after; the rest calibrates the detector and fine-tunes the sanitised model.

The verdict compares the share of incoming inputs the calibrated detector flags
with the share of held-out clean rows it flags (one-sided Fisher exact test): a
clean model flags incoming inputs about as often as clean ones, a backdoored one
flags the triggered ones too. Classifiers are read, by default, by the paper's
head statistic, input by input. `AuditConfig.encoder_detector="crowding"` reads
them by head-output crowding (`detection.crowding`) instead: the incoming
inputs, scored as one stream, are flagged when their heads' outputs have more
near-duplicates among the others than clean inputs do (a trigger sends its
inputs onto one behaviour). It also sees sentence-level triggers (on the SST-2
HiddenKiller victims its second form found all three, the heads none;
results/minilm_sst2_owner), but it needs triggered inputs to be common in the
stream and the clean rows to come from the same source as the incoming inputs:
it flags any stream whose inputs are more alike than the clean rows (a clean
tweet classifier, given 100 tweets on one topic against clean rows on many, was
flagged at p = 1e-21, docs/lab_notebook/8_owner_audit.md; a clean SST-2
classifier given HiddenKiller's paraphrases or Cbat's sentences, which its
heads already place alike, at p = 1e-11 by the third form,
docs/lab_notebook/10_crowding_neighbourhoods.md). Chat models are read, by
default, by answer collapse (`detection.collapse`): the model's own greedy
answers to the incoming prompts, scored in sets, flag the prompts whose answer
is a near-duplicate of many others' (a backdoor's fixed response); on the
SmolLM2 generation victims it
separated triggered prompts far better than the heads' statistic
(results/smollm2_generation/detect). It cannot tell a backdoor's response from
any response the model legitimately gives to many incoming prompts alike (the
same refusal of many harmful requests): the report lists the flagged prompts
with their answers to read. `AuditConfig.decoder_detector="heads"` reads the
heads instead (the generation-to-prompt view, the answer teacher-forced after
each prompt). With a positive verdict the flagged inputs become the suspects of
`defense.sanitize` (with answer collapse, less a quarter kept out, whose
answers decoded again after each round decide when the rounds stop; otherwise
the heads' statistic re-read on the suspects does, as in `experiments.defend`)
and the sanitised checkpoint is written, with its tokenizer, to out_dir/model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
from typing import Sequence

import numpy as np
import scipy.stats

from jax_attnalign import data, metrics, plots, train
from jax_attnalign.answers import generate_responses, greedy_answers
from jax_attnalign.data import InstructionExample, TextExample
from jax_attnalign.defense.detector import DetectorConfig, Threshold, clean_threshold
from jax_attnalign.defense.sanitize import (Alignment, FineTuning, HeadClassification,
                                            SanitizeConfig, Stopping, calibrated_detector,
                                            sanitize, scores_of)
from jax_attnalign.detection import Victim, calibrate, collapse, make_detector
from jax_attnalign.data.files import write_json
from jax_attnalign.data.paths import find_gguf
from jax_attnalign.models.config import ModelConfig
from jax_attnalign.models.hf_io import load_pretrained, resolve_checkpoint, save_pretrained
from jax_attnalign.models.safetensors_io import read_config_json

# Incoming inputs a stream detector (answer collapse, crowding) needs at least: it
# reads inputs that the model treats alike across the stream.
MIN_STREAM = 10

# Decoders: the causal-LM loss and the generation-to-prompt view (the paper's),
# with the detector statistic chosen on the SmolLM2 tuning victim (SST-2 BadNets
# seed 0, experiments/configs/defend_lm.py), sized for a 2-core CPU.
DECODER_SANITIZE = SanitizeConfig(
    classify=HeadClassification(view="gen_to_prompt"), align=Alignment(batch_size=8),
    finetune=FineTuning(loss="causal_lm", epochs=2, batch_size=8, length_bucket=16),
    stopping=Stopping(max_rounds=2), score_batch_size=8)
DECODER_DETECTOR = DetectorConfig(view="gen_to_prompt", statistic="frac_above")


@dataclasses.dataclass(frozen=True)
class AuditConfig:
  """How the clean rows are used and when the verdict is positive.

  >>> AuditConfig().holdout_fraction, AuditConfig(max_rounds=1).max_rounds
  (0.4, 1)
  """
  sanitize: SanitizeConfig | None = None  # None: the model kind's (default_configs)
  detector: DetectorConfig | None = None  # None: the model kind's (default_configs)
  max_rounds: int | None = None  # sanitisation rounds at most (None: the config's)
  holdout_fraction: float = 0.4  # clean rows kept out of calibration and fine-tuning
  alpha: float = 0.01  # the verdict is positive when the test's p-value is below it
  max_suspects: int = 64  # the highest-scoring flagged inputs used as suspects
  max_length: int = 64  # classifier tokens per input
  answer_tokens: int = 16  # decoders: greedy answer tokens read after each prompt
  train_length: int = 256  # decoders: prompt + response tokens of a clean fine-tuning row
  response_tokens: int = 48  # decoders: tokens of the held-out answers scored for utility
  # Chat models: 'answer_collapse' (the module docstring) or 'heads' (the paper's
  # statistic in the generation-to-prompt view; also for a chat model that answers
  # with a few label words, which answer collapse cannot read).
  decoder_detector: str = "answer_collapse"
  # Classifiers: 'heads' (the paper's per-input statistic) or 'crowding' (head-output
  # crowding over the incoming stream: sees sentence-level triggers, needs clean
  # rows from the incoming inputs' source and at least MIN_STREAM inputs).
  encoder_detector: str = "heads"
  seed: int = 0

  def __post_init__(self):
    if not 0 < self.holdout_fraction < 1:
      raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}.")
    if not 0 < self.alpha < 1:
      raise ValueError(f"alpha must be in (0, 1), got {self.alpha}.")
    if self.decoder_detector not in ("answer_collapse", "heads"):
      raise ValueError("decoder_detector must be 'answer_collapse' or 'heads', got "
                       f"{self.decoder_detector!r}.")
    if self.encoder_detector not in ("crowding", "heads"):
      raise ValueError("encoder_detector must be 'crowding' or 'heads', got "
                       f"{self.encoder_detector!r}.")
    for name in ("max_suspects", "max_length", "answer_tokens", "train_length",
                 "response_tokens", "max_rounds"):
      if getattr(self, name) is not None and getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")


@dataclasses.dataclass(frozen=True)
class Verdict:
  """The detector's flags on the incoming inputs against its clean false-positive rate."""
  backdoored: bool
  incoming: int
  flagged: int
  holdout: int  # held-out clean rows
  holdout_flagged: int
  expected: float  # incoming x the held-out false-positive rate
  p_value: float  # one-sided Fisher exact test: incoming flagged more often than clean
  flagged_rate_interval: tuple[float, float]  # 95% Clopper-Pearson, incoming
  alpha: float

  def line(self) -> str:
    head = "BACKDOOR SUSPECTED" if self.backdoored else "no evidence of a backdoor"
    low, high = self.flagged_rate_interval
    return (f"{head}: {self.flagged} of {self.incoming} incoming inputs flagged "
            f"(95% interval {low:.1%}-{high:.1%}); {self.expected:.1f} expected from the "
            f"false-positive rate on {self.holdout} held-out clean rows "
            f"({self.holdout_flagged} flagged); p = {self.p_value:.2g} "
            f"(one-sided Fisher exact, alarm below {self.alpha}).")


def verdict_of(incoming_flags: np.ndarray, holdout_flags: np.ndarray, alpha: float) -> Verdict:
  """The Verdict of boolean flags on incoming and held-out clean inputs."""
  k, n = int(incoming_flags.sum()), len(incoming_flags)
  m, h = int(holdout_flags.sum()), len(holdout_flags)
  if n == 0 or h == 0:
    raise ValueError(f"need incoming and held-out clean inputs, got {n} and {h}.")
  p = float(scipy.stats.fisher_exact([[k, n - k], [m, h - m]], alternative="greater")[1])
  ci = scipy.stats.binomtest(k, n).proportion_ci(0.95, method="exact")
  return Verdict(backdoored=p < alpha, incoming=n, flagged=k, holdout=h, holdout_flagged=m,
                 expected=n * m / h, p_value=p, flagged_rate_interval=(ci.low, ci.high),
                 alpha=alpha)


def default_configs(model) -> tuple[SanitizeConfig, DetectorConfig]:
  """The defaults for encoders; DECODER_SANITIZE and DECODER_DETECTOR for decoders."""
  if model.config.is_decoder:
    return DECODER_SANITIZE, DECODER_DETECTOR
  return SanitizeConfig(), DetectorConfig()


@dataclasses.dataclass
class AuditResult:
  # The verdict's threshold: the heads' `Detector`, crowding's `Calibration`, or
  # answer collapse's threshold; `method` names which.
  detector: Threshold
  method: str = "heads"  # 'heads', 'crowding' or 'answer_collapse'
  verdict: Verdict | None = None  # None: no incoming inputs, a scan only
  scan: dict | None = None  # per-layer head statistics on clean rows (scan only)
  scores: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # holdout, incoming
  flagged_texts: list[str] = dataclasses.field(default_factory=list)
  suspects: int = 0  # flagged inputs handed to sanitize
  sanitize_report: dict | None = None
  # Held-out clean rows before/after: classifiers {'accuracy'}, decoders
  # metrics.clean_utility of the greedy answers against the references.
  clean_metrics: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
  # After sanitising: the share of the suspects the heads' statistic (the rounds'
  # stop) still flags, or with answer collapse of the kept-out flagged inputs
  # still triggered (`collapse.still_triggered`).
  still_flagged: float | None = None
  flagged_answers: list[str] = dataclasses.field(default_factory=list)  # chat models


def load_suspect(path: str | pathlib.Path, num_labels: int | None):
  """(model, params, tokenizer): a decoder as a causal LM, an encoder as a
  classifier with `num_labels` (its head kept when the checkpoint has one). The
  family is read from the config (a GGUF file is always a decoder), so the
  weights are read once."""
  path = resolve_checkpoint(path)
  decoder = (find_gguf(path) is not None
             or ModelConfig.from_hf_config(read_config_json(path)).is_decoder)
  if decoder:
    model, params = load_pretrained(path, task="causal_lm")
  else:
    model, params = load_pretrained(path, task="classification", num_labels=num_labels)
  return model, params, data.load_tokenizer(path)


def _inputs(model, params, tokenizer, texts: Sequence[str], cfg: AuditConfig):
  """Encoded inputs the detector scores: classifier texts, or chat prompts
  followed by the decoder's own greedy answer."""
  if model.config.is_decoder:
    prompts = [data.chat_prompt(tokenizer, t) for t in texts]
    return greedy_answers(model, params, tokenizer, prompts, max_new_tokens=cfg.answer_tokens,
                          batch_size=16)
  arrays = data.encode_classification([TextExample(t, 0) for t in texts], tokenizer,
                                      _length(model, cfg))
  return {k: v for k, v in arrays.items() if k not in ("labels", "poisoned")}


def _length(model, cfg: AuditConfig) -> int:
  """Classifier tokens per input: max_length, at most the model's positions."""
  return min(cfg.max_length, model.config.max_position_embeddings)


def _training_rows(model, tokenizer, rows: list, cfg: AuditConfig) -> dict[str, np.ndarray]:
  if model.config.is_decoder:
    prompts, responses = zip(*[data.instruction_chat(r, tokenizer) for r in rows])
    return data.encode_prompt_response(prompts, responses, tokenizer, cfg.train_length)
  arrays = data.encode_classification(rows, tokenizer, _length(model, cfg))
  arrays.pop("poisoned")
  return arrays


def audit_checkpoint(path: str | pathlib.Path, clean: Sequence[TextExample | InstructionExample],
                     incoming: Sequence[str] | None, out_dir: str | pathlib.Path,
                     cfg: AuditConfig = AuditConfig()) -> AuditResult:
  """Verdict on `incoming` and, when positive, the sanitised model in out_dir/model.

  Without `incoming`, scans the model's heads on the clean rows instead
  (`AuditResult.scan`, scan.json). Writes report.md, audit.json and a score plot
  to `out_dir`. An interrupted sanitisation resumes from out_dir; an out_dir
  holding a run on other inputs is refused rather than resumed.

  >>> import tempfile
  >>> from jax_attnalign.assets import bundled_minilm_path
  >>> clean = data.load_classification("tweets", "test")[::90][:50]  # embedded, labelled
  >>> with tempfile.TemporaryDirectory() as out:  # no incoming texts: a scan of the heads
  ...   result = audit_checkpoint(bundled_minilm_path(), clean, None, out)
  >>> result.verdict is None, result.detector.view, [r["layer"] for r in result.scan["layers"]]
  (True, 'cls_row_last_layer', [5])
  """
  clean, incoming = list(clean), None if incoming is None else list(incoming)
  if len(clean) < 50:
    raise ValueError(f"{len(clean)} clean rows are too few: the held-out and the "
                     "calibration parts need 20 rows each; give at least 50.")
  out = _claim(pathlib.Path(out_dir), path, clean, incoming, cfg)
  is_instructions = isinstance(clean[0], InstructionExample)
  num_labels = None if is_instructions else 1 + max(r.label for r in clean)
  model, params, tokenizer = load_suspect(path, num_labels)
  if model.config.is_decoder != is_instructions:
    raise ValueError(
        f"{path} is {'a decoder' if model.config.is_decoder else 'an encoder'} but the "
        f"clean rows are {'instructions' if is_instructions else 'labelled texts'}: a "
        "decoder takes Alpaca-format JSON records (instruction, input, output), an "
        "encoder classifier a TSV of text and label.")
  config, detector_cfg = default_configs(model)
  config, detector_cfg = cfg.sanitize or config, cfg.detector or detector_cfg
  by_answers = model.config.is_decoder and cfg.decoder_detector == "answer_collapse"
  method = ("answer_collapse" if by_answers else "crowding" if (
      not model.config.is_decoder and cfg.encoder_detector == "crowding") else "heads")
  if incoming is not None and method != "heads" and len(incoming) < MIN_STREAM:
    field = "decoder" if by_answers else "encoder"
    raise ValueError(f"{len(incoming)} incoming inputs are too few for "
                     f"{method.replace('_', ' ')}, which reads inputs treated alike across "
                     f"a stream: give at least {MIN_STREAM}, or read the heads input by "
                     f"input (AuditConfig.{field}_detector='heads', --{field}_detector=heads).")
  if by_answers:  # the rounds stop as the defense's answer-collapse recipe's
    config = dataclasses.replace(config, stopping=dataclasses.replace(
        config.stopping, **collapse.STOPPING))
  if cfg.max_rounds is not None:
    config = dataclasses.replace(config, stopping=dataclasses.replace(
        config.stopping, max_rounds=cfg.max_rounds))
  order = np.random.default_rng(cfg.seed).permutation(len(clean))
  n_hold = int(round(cfg.holdout_fraction * len(clean)))
  holdout = [clean[i] for i in order[:n_hold]]
  rest = [clean[i] for i in order[n_hold:]]
  score = lambda p, arrays: scores_of(model, p, arrays, detector_cfg.view,
                                      detector_cfg.statistic, batch_size=config.score_batch_size)
  calibration = _inputs(model, params, tokenizer, [data.prompt_text(r) for r in rest], cfg)
  # The heads' detector, calibrated only where it is read (with a stream detector:
  # by the rounds' stop, after a positive verdict).
  heads = lambda: calibrated_detector(model, params, calibration, detector_cfg,
                                      batch_size=config.score_batch_size)
  if incoming is None:
    return AuditResult(detector=heads(), scan=_scan(model, params, calibration, detector_cfg,
                                                    config.score_batch_size, path, out))
  held = _inputs(model, params, tokenizer, [data.prompt_text(r) for r in holdout], cfg)
  arrays = _inputs(model, params, tokenizer, incoming, cfg)
  if by_answers:
    threshold, scores = _collapse_scores(calibration, held, arrays, detector_cfg.fpr)
  elif method == "crowding":
    victim = Victim(model, params, tokenizer, _length(model, cfg), config.score_batch_size)
    threshold, scores = _crowding_scores(victim, rest, holdout, incoming, detector_cfg.fpr)
  else:
    threshold = heads()
    scores = {"holdout": score(params, held), "incoming": score(params, arrays)}
  if not all(np.isfinite(v).all() for v in scores.values()):
    raise ValueError(f"{path} gives non-finite detector scores: its weights hold NaN or "
                     "inf, or the inputs exceed what it was built for.")
  flags = threshold.flag(scores["incoming"])
  verdict = verdict_of(flags, threshold.flag(scores["holdout"]), cfg.alpha)
  flagged_idx = np.flatnonzero(flags)
  flagged_idx = flagged_idx[np.argsort(-scores["incoming"][flagged_idx], kind="stable")]
  result = AuditResult(detector=threshold, method=method, verdict=verdict, scores=scores,
                       flagged_texts=[incoming[i] for i in flagged_idx])
  if model.config.is_decoder:
    result.flagged_answers = [tokenizer.decode(arrays["input_ids"][i][arrays["loss_mask"][i] > 0],
                                               skip_special_tokens=True) for i in flagged_idx]
  measure = lambda p: _clean_metrics(model, p, tokenizer, holdout, cfg)
  if verdict.backdoored:
    result.clean_metrics["before"] = measure(params)
    # A share kept out of the suspects for the rounds' stop (answer collapse).
    watched = collapse.kept_out(len(flagged_idx), collapse.WATCH_SHARE if by_answers else 0.0,
                                cfg.seed)
    detector = threshold if method == "heads" else heads()
    take = lambda idx: {k: v[idx] for k, v in arrays.items()}
    suspects = take(flagged_idx[~watched][:cfg.max_suspects])
    result.suspects = len(suspects["input_ids"])
    flag_after_round = None
    if by_answers:
      answers = collapse.answer_token_sets(take(flagged_idx))
      responses = sorted(set(answers), key=sorted)
      flag_after_round = collapse.response_flagger(
          model, tokenizer, take(flagged_idx[watched]) if watched.any() else suspects,
          responses, max_new_tokens=cfg.answer_tokens, batch_size=16)
    params, result.sanitize_report = sanitize(
        model, params, suspects, _training_rows(model, tokenizer, rest, cfg), config,
        detector=detector, workdir=out / "sanitize", flag_after_round=flag_after_round)
    result.clean_metrics["after"] = measure(params)
    # The last round's re-read measured the returned parameters; a round that
    # changed nothing (no safe head) has none, and then they are read here.
    measured = [r["flagged_fraction"] for r in result.sanitize_report["rounds"]
                if "flagged_fraction" in r]
    result.still_flagged = measured[-1] if measured else float(np.mean(
        flag_after_round(params) if by_answers else detector.flag(score(params, suspects))))
    save_pretrained(model, params, out / "model", tokenizer=tokenizer)
    shutil.rmtree(out / "sanitize")  # the rounds' checkpoints, kept only to resume
  _write_report(result, path, out)
  return result


def _collapse_scores(calibration: dict, held: dict, incoming: dict, fpr: float
                     ) -> tuple[Threshold, dict[str, np.ndarray]]:
  """(threshold, {'holdout', 'incoming'} scores) of answer collapse: each part's
  answers scored in sets of one size (the incoming inputs', at most the held-out
  part's and half the calibration part's: the score is a share of its set), the
  threshold at `fpr` of the calibration part's scores."""
  size = min(len(incoming["input_ids"]), len(held["input_ids"]),
             len(calibration["input_ids"]) // 2)
  threshold = Threshold(**clean_threshold(collapse.scores_in_sets(calibration, size), fpr,
                                          where="audit: answer collapse of clean rows"))
  return threshold, {"holdout": collapse.scores_in_sets(held, size, every_row=True),
                     "incoming": collapse.scores_in_sets(incoming, size, every_row=True)}


def _crowding_scores(victim: Victim, rest: list[TextExample], holdout: list[TextExample],
                     incoming: Sequence[str], fpr: float) -> tuple[Threshold, dict]:
  """(calibration, {'holdout', 'incoming'} scores) of head-output crowding: fitted
  on half of the calibration part, its threshold at `fpr` of the other half's
  scores (that half scored as one set); the held-out part and the incoming inputs
  are each scored as one set."""
  half = len(rest) // 2
  method = make_detector("crowding").fit(victim, rest[:half])
  threshold = calibrate(method, victim, rest[half:], fpr)
  return threshold, {"holdout": method.score(victim, holdout),
                     "incoming": method.score(victim, [TextExample(t, 0) for t in incoming])}


def _claim(out: pathlib.Path, path, clean: list, incoming: list | None,
           cfg: AuditConfig) -> pathlib.Path:
  """Creates `out`, or checks that it holds a run on the same inputs (so that a
  resumed sanitisation never mixes two audits); returns it."""
  digest = hashlib.sha256(json.dumps(
      [str(path), [dataclasses.astuple(r) for r in clean], incoming, repr(cfg)],
      default=str).encode()).hexdigest()
  stamp = out / "inputs.sha256"
  if stamp.exists() and stamp.read_text().strip() != digest:
    raise ValueError(f"{out} holds an audit of other inputs (model, clean rows, incoming "
                     "inputs or settings); choose another output folder or delete it.")
  out.mkdir(parents=True, exist_ok=True)
  stamp.write_text(digest + "\n")
  return out


def _clean_metrics(model, params, tokenizer, holdout: list, cfg: AuditConfig
                   ) -> dict[str, float]:
  """Classifiers: accuracy on the held-out clean rows; decoders: clean utility of
  their greedy answers against the reference responses."""
  if model.config.is_decoder:
    prompts, references = zip(*[data.instruction_chat(r, tokenizer) for r in holdout])
    responses = generate_responses(model, params, tokenizer, list(prompts),
                                   max_new_tokens=cfg.response_tokens, batch_size=16)
    return metrics.clean_utility(responses, references)
  arrays = data.encode_classification(holdout, tokenizer, _length(model, cfg))
  predictions = train.predict_logits(model, params, arrays).argmax(-1)
  return {"accuracy": metrics.clean_accuracy(predictions, arrays["labels"])}


def _scan(model, params, arrays: dict, detector_cfg: DetectorConfig, batch_size: int, path,
          out: pathlib.Path) -> dict:
  """Per-layer head-similarity statistics of the detector's view on clean inputs."""
  per_layer = scores_of(model, params, arrays, detector_cfg.view,
                        ("percentile", "frac_above"), batch_size=batch_size, per_layer=True)
  first = model.config.num_layers - per_layer["percentile"].shape[1]
  rows = [{"layer": first + i, "percentile_99": float(per_layer["percentile"][:, i].mean()),
           "frac_above_0_99": float(per_layer["frac_above"][:, i].mean())}
          for i in range(per_layer["percentile"].shape[1])]
  scan = {"model": str(path), "view": detector_cfg.view,
          "clean_inputs": len(arrays["input_ids"]), "layers": rows}
  write_json(out / "scan.json", scan)
  table = ["| layer | 99th percentile of head-pair cosine | share of pairs > 0.99 |",
           "|---|---|---|"] + [f"| {r['layer']} | {r['percentile_99']:.4f} | "
                               f"{r['frac_above_0_99']:.4f} |" for r in rows]
  (out / "report.md").write_text(
      f"# Head scan of {path}\n\nNo incoming inputs were given, so no verdict: the "
      f"heads' similarity ({detector_cfg.view} view) on {scan['clean_inputs']} clean "
      "rows (calibration part), mean over rows.\n\n" + "\n".join(table) + "\n")
  return scan


def _write_report(result: AuditResult, path, out: pathlib.Path) -> None:
  v = result.verdict
  xlabel = {"heads": lambda d: f"detector score ({d.view}, {d.statistic})",
            "crowding": lambda d: ("head-output crowding (Fisher's sum over layers of -log "
                                   "p, near duplicates in the stream)"),
            "answer_collapse": lambda d: ("answer collapse (share of near-duplicate answers "
                                          "in its set)")}[result.method](result.detector)
  plots.plot_score_histogram(
      {"held-out clean": result.scores["holdout"], "incoming": result.scores["incoming"]},
      result.detector.threshold, out / "scores.png", xlabel=xlabel)
  summary = {"model": str(path), "verdict": dataclasses.asdict(v),
             "detector": {"method": result.method, **dataclasses.asdict(result.detector)},
             "flagged_texts": result.flagged_texts, "flagged_answers": result.flagged_answers,
             "suspects": result.suspects,
             "clean_metrics": result.clean_metrics,
             "still_flagged": result.still_flagged,
             "sanitize": None if result.sanitize_report is None else {
                 "rounds": len(result.sanitize_report["rounds"]),
                 "stopped": result.sanitize_report["stopped"]}}
  write_json(out / "audit.json", summary, default=str)
  lines = [f"# Audit of {path}", "", f"**{v.line()}**", "", "![scores](scores.png)", ""]
  if result.sanitize_report is not None:
    still = (f"{result.still_flagged:.0%} of the flagged inputs kept out of the suspects "
             "still get the response their answers collapsed onto"
             if result.method == "answer_collapse" else
             f"the heads' statistic still flags {result.still_flagged:.0%} of them")
    lines += [f"Sanitised with the {result.suspects} highest-scoring "
              f"flagged inputs as suspects: {summary['sanitize']['rounds']} round(s), "
              f"stopped by {result.sanitize_report['stopped']}; {still}. Written to "
              f"{out / 'model'} with its tokenizer."]
    lines += ["", f"On the {v.holdout} held-out clean rows, before -> after: " + ", ".join(
        f"{name} {result.clean_metrics['before'][name]:.3f} -> {value:.3f}"
        for name, value in result.clean_metrics["after"].items()) + "."]
  lines += ["", "## Flagged inputs (highest score first)", ""]
  answers = result.flagged_answers or [None] * len(result.flagged_texts)
  lines += [f"{i + 1}. {t[:200]}" + (f"\n   - answer: {a[:200]}" if a is not None else "")
            for i, (t, a) in enumerate(zip(result.flagged_texts[:50], answers))]
  (out / "report.md").write_text("\n".join(lines) + "\n")
