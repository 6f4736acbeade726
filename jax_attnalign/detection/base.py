"""Input detectors under one interface: fitted on the defender's clean data,
calibrated at a target false-positive rate, flagging incoming inputs.

  victim = Victim(model, params, tokenizer)
  detector = make_detector("strip").fit(victim, clean_fit)
  calibration = calibrate(detector, victim, clean_calibration, fpr=0.05)
  flags = calibration.flag(detector.score(victim, incoming))

A detector scores each input of a deployed classifier, higher = more likely
triggered. `fit` sees only what the defender holds (clean labelled training
rows; each detector's docstring says which parts it uses and what else it
needs, such as a language model); it never sees triggered inputs. `calibrate`
scores further clean rows and sets the threshold at their (1 - fpr) quantile,
the paper detector's rule (`defense.detector.calibrate_detector`). A score that
is not finite is flagged.

Saving: the calibration (detector name, settings, threshold) is JSON; a
detector's fitted arrays (DAN's class means, a profile's covariance) go to an
.npz beside it, read back with `allow_pickle=False`. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Protocol, Sequence

import jax
import numpy as np

from jax_attnalign import data, train, validation
from jax_attnalign.data.files import write_json, write_npz
from jax_attnalign.data.types import TextExample
from jax_attnalign.defense.detector import Threshold, clean_threshold
from jax_attnalign.errors import CheckpointError, InputError
from jax_attnalign.models import apply_batch


@dataclasses.dataclass
class Victim:
  """The deployed classifier as detectors see it: the model, its weights, its
  tokenizer and how inputs are encoded (`data.encode_classification`)."""
  model: Any
  params: Any
  tokenizer: Any
  max_length: int = 64
  batch_size: int = 32

  @property
  def num_classes(self) -> int:
    return self.model.config.num_labels

  def encode(self, examples: Sequence[TextExample]) -> dict[str, np.ndarray]:
    """The inputs the head and representation signals read."""
    return data.encode_classification(list(examples), self.tokenizer, self.max_length)

  def class_inputs(self, examples: Sequence[TextExample]) -> dict[str, np.ndarray]:
    """The inputs `class_logits` reads (an encoder's are `encode`'s)."""
    return self.encode(examples)

  def class_logits(self, params, batch: dict) -> jax.Array:
    """Class logits [B, C] of a batch of `class_inputs` under `params` (jit-safe)."""
    return apply_batch(self.model, params, batch).logits

  def probabilities(self, examples: Sequence[TextExample]) -> np.ndarray:
    """Class probabilities [n, C] of the examples' texts."""
    logits = train.predict_logits(self.model, self.params, self.class_inputs(examples),
                                  batch_size=self.batch_size, length_bucket=16)
    return np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), axis=-1))


class InputDetector(Protocol):
  """What every detector of `DETECTORS` implements."""
  name: str

  def fit(self, victim: Victim, clean: Sequence[TextExample]) -> "InputDetector":
    """Fits on clean labelled rows (the defender's); returns self."""

  def score(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    """One score per example [n], higher = more likely triggered."""

  def settings(self) -> dict:
    """The JSON-able settings that rebuild it with `make_detector(name, **settings)`."""

  def state(self) -> dict[str, np.ndarray]:
    """Its fitted arrays ({} when `fit` learns nothing)."""

  def load_state(self, state: dict[str, np.ndarray]) -> None:
    """Restores what `state` returned."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Calibration(Threshold):
  """A detector's threshold at a target false-positive rate on clean inputs.

  >>> calibration = Calibration(detector="strip", settings={}, fpr=0.05, threshold=0.9,
  ...                           clean_count=200, clean_mean=0.5, clean_std=0.2)
  >>> calibration.flag([0.5, 0.95, float("nan")]).tolist()  # not finite: flagged
  [False, True, True]
  """
  detector: str
  settings: dict

  def save(self, path: str | pathlib.Path, detector: InputDetector | None = None) -> None:
    """JSON at `path`; the detector's fitted arrays, if any, at path + '.npz'.

    Each file is replaced atomically, the arrays first: a save stopped midway
    leaves the old calibration whole or, at worst, the old JSON beside the new
    arrays (or beside none). Saved without arrays, it removes the .npz of an
    earlier save, so that `load` never gives a detector another fit's state."""
    path = pathlib.Path(path)
    state_path = pathlib.Path(f"{path}.npz")
    if detector is not None and (state := detector.state()):
      write_npz(state_path, **state)
    else:
      state_path.unlink(missing_ok=True)
    write_json(path, dataclasses.asdict(self))

  @classmethod
  def load(cls, path: str | pathlib.Path) -> tuple["Calibration", InputDetector]:
    """(calibration, its detector rebuilt with its fitted arrays)."""
    path = pathlib.Path(path)
    try:
      calibration = cls(**json.loads(path.read_text()))
      detector = make_detector(calibration.detector, **calibration.settings)
    except (UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
      raise CheckpointError(f"{path} is not a calibration saved by Calibration.save ({e}). "
                            "Recalibrate with detection.calibrate.") from e
    state_path = pathlib.Path(f"{path}.npz")
    if state_path.exists():
      try:
        with np.load(state_path, allow_pickle=False) as f:
          detector.load_state({k: f[k] for k in f.files})
      except (ValueError, OSError, KeyError) as e:
        raise CheckpointError(f"{state_path} holds no fitted state of {calibration.detector} "
                              f"({e}). Refit and recalibrate the detector.") from e
    return calibration, detector


def calibrate(detector: InputDetector, victim: Victim, clean: Sequence[TextExample],
              fpr: float = 0.05) -> Calibration:
  """The threshold flagging about `fpr` of clean inputs: the (1 - fpr) quantile
  of the fitted detector's scores on `clean` (rows it was not fitted on)."""
  return Calibration(detector=detector.name, settings=detector.settings(),
                     **clean_threshold(detector.score(victim, clean), fpr, where="calibrate"))


DETECTORS: dict[str, type] = {}


def register(cls: type) -> type:
  """Class decorator adding a detector class to DETECTORS under its `name`."""
  DETECTORS[cls.name] = cls
  return cls


def require_classes(where: str, victim: Victim) -> None:
  """Refuses a victim without classes (a generation victim) where class
  probabilities are read."""
  if not victim.num_classes:
    raise InputError(f"{where} reads class probabilities; this victim has no classes (a "
                     "generation victim). Use a head or representation detector instead.")


def needs_classes(name: str) -> bool:
  """Whether detector `name` reads class probabilities (STRIP, RAP), so cannot score
  a victim without classes (a generation victim, `chat.ChatVictim`)."""
  validation.choice("needs_classes: name", name, tuple(sorted(DETECTORS)))
  return getattr(DETECTORS[name], "needs_classes", False)


def needs_answers(name: str) -> bool:
  """Whether detector `name` reads a generation victim's free answers (answer
  collapse), so cannot score a classifier, whose answer is a label word."""
  validation.choice("needs_answers: name", name, tuple(sorted(DETECTORS)))
  return getattr(DETECTORS[name], "needs_answers", False)


def make_detector(name: str, **settings) -> InputDetector:
  """A fresh detector of DETECTORS by name, with `settings` as its constructor's keywords."""
  validation.choice("make_detector: name", name, tuple(sorted(DETECTORS)))
  return DETECTORS[name](**settings)
