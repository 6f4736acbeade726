"""Our detectors: signals read off the attention heads of the deployed model.

None needs the trigger, the incoming inputs' labels or a reference model; each
is fitted on clean inputs only, without their labels (`combined` with DAN as a
part inherits DAN's need for labelled clean rows).

  paper               the paper's score: one statistic of the pairwise head
                      cosines of a view (`defense.detector.batch_scores`); fits nothing
  cosine_profile      every pairwise head cosine of every viewed layer, [L' N(N-1)/2]
  entropy_profile     each head's attention entropy over the view's rows, [L' N]
  output_profile      the pairwise cosines of the heads' outputs at [CLS] or a
                      chat decoder's last prompt token (`attn.z`, the H of
                      eq. 4), [L N(N-1)/2]
  importance_profile  each head's |H^T dL/dH| for this input, with the model's
                      own prediction as the label (`head_gate_gradients`), [L N]
  combined            the sum of its parts' scores, each standardised on held-out
                      clean rows (default: cosine_profile + DAN's [CLS] distances)

On a chat decoder (`chat.ChatVictim`) every signal reads the prompt followed
by the model's own greedy answer, and the views' output rows are the answer's
rows over the prompt (the generation-to-prompt block).

A profile's score is its vector's squared Mahalanobis distance to the Gaussian
of clean inputs' vectors, each dimension standardised and the covariance shrunk
with Ledoit-Wolf's weight unless `shrinkage` is given (`_profile`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_attnalign import validation
from jax_attnalign.analysis.importance import head_gate_gradients
from jax_attnalign.analysis.similarity import head_cosine
from jax_attnalign.analysis.streaming import streaming_head_similarity
from jax_attnalign.analysis.views import extract_view, resolve_view
from jax_attnalign.data.types import TextExample
from jax_attnalign.defense import checks
from jax_attnalign.defense.detector import STATISTICS, DetectorConfig
from jax_attnalign.defense.scoring import scores_of
from jax_attnalign.detection import dan
from jax_attnalign.detection._profile import (fit_gaussian, holdout_split, layer_summaries,
                                              mahalanobis, per_example, readout,
                                              require_fitted, standardizer)
from jax_attnalign.detection.base import DETECTORS, Victim, make_detector, register
from jax_attnalign.models import MODEL_INPUTS

PROFILE_VIEW = "cls_row_nospecial"  # the [CLS] row over the words, every layer


def head_pairs(cosine: jax.Array) -> jax.Array:
  """The distinct head pairs of [B, L, N, N], layer by layer: [B, L N(N-1)/2]."""
  rows, cols = jnp.triu_indices(cosine.shape[-1], k=1)
  return cosine[..., rows, cols].reshape(cosine.shape[0], -1)


def _extra(batch: dict) -> dict:
  """token_type_ids (encoders) and prompt_lengths (decoders' answer inputs), if given."""
  return {k: batch[k] for k in MODEL_INPUTS[2:] + ("prompt_lengths",) if k in batch}


@functools.partial(jax.jit, static_argnames=("model", "view"))
def cosine_features(model, params, batch: dict, view: str) -> jax.Array:
  """Every pairwise head cosine of the view's blocks, layer by layer: [B, L' N(N-1)/2]."""
  return head_pairs(streaming_head_similarity(
      model, params, batch["input_ids"], batch["attention_mask"], view,
      special_mask=batch.get("special_mask"), **_extra(batch)))


@functools.partial(jax.jit, static_argnames=("model", "view"))
def entropy_features(model, params, batch: dict, view: str) -> jax.Array:
  """Each head's attention entropy over the view's rows (their mean if several): [B, L' N]."""
  view = resolve_view(view)
  whole = dataclasses.replace(view, layers="all")  # layers are chosen by hook name

  def entropy(probs, _):  # [B, N, T, S] -> each head's mean entropy over the viewed rows [B, N]
    blocks, valid = extract_view(probs[None], whole, attention_mask=batch["attention_mask"],
                                 special_mask=batch.get("special_mask"),
                                 prompt_lengths=batch.get("prompt_lengths"),
                                 is_decoder=model.config.is_decoder)
    p = blocks[0].reshape(*blocks.shape[1:3], -1, probs.shape[-1])  # [B, N, R, S]
    rows = valid.reshape(valid.shape[0], -1, probs.shape[-1]).any(-1)  # [B, R]
    h = -jnp.sum(p * jnp.log(jnp.where(p > 0, p, 1.0)), -1)  # [B, N, R]
    return jnp.sum(h * rows[:, None], -1) / jnp.maximum(rows.sum(-1), 1)[:, None]

  layers = view.layer_indices(model.config.num_layers)
  out = layer_summaries(model, params, batch, "attn.pattern", entropy, layers)
  return out.reshape(out.shape[0], -1)


@functools.partial(jax.jit, static_argnames="model")
def output_features(model, params, batch: dict) -> jax.Array:
  """The pairwise cosines of the heads' outputs at [CLS] (a decoder's last prompt
  token) (attn.z), every layer: [B, L N(N-1)/2]."""
  return head_pairs(layer_summaries(model, params, batch, "attn.z",  # z: [B, T, N, H]
                                    lambda z, _: head_cosine(readout(z, batch))))


def importance_features(model, params, batch: dict) -> jax.Array:
  """Each head's |H^T dL/dH| (eq. 4 for this input alone), the model's own
  prediction as the label (a decoder's: its own teacher-forced answer): [B, L N]."""
  inputs = {k: batch[k] for k in MODEL_INPUTS + ("loss_mask",) if k in batch}
  grads = head_gate_gradients(model, params, inputs, use_predictions=True)  # [B, L, N]
  return jnp.abs(grads).reshape(grads.shape[0], -1)


@register
@dataclasses.dataclass
class Paper:
  """The paper's detector: `statistic` of the pairwise head cosines of `view`,
  averaged over its layers (defaults: `DetectorConfig`). Fits nothing."""
  name: ClassVar[str] = "paper"
  view: str = DetectorConfig.view
  statistic: str = DetectorConfig.statistic

  def __post_init__(self):
    checks.view("paper.view", self.view)
    validation.choice("paper.statistic", self.statistic, STATISTICS)

  def fit(self, victim: Victim, clean: Sequence[TextExample]) -> "Paper":
    del victim, clean
    return self

  def score(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    return scores_of(victim.model, victim.params, victim.encode(examples), self.view,
                     self.statistic, batch_size=victim.batch_size)

  def settings(self) -> dict:
    return dataclasses.asdict(self)

  def state(self) -> dict[str, np.ndarray]:
    return {}

  def load_state(self, state: dict[str, np.ndarray]) -> None:
    del state


@dataclasses.dataclass
class _Profile:
  """Squared Mahalanobis distance of a per-input vector to clean inputs' Gaussian.

  extract: the jitted fn(model, params, batch, **static) -> [B, F] of the vector,
  static: its settings; shrinkage: the identity target's weight, None = Ledoit-Wolf.
  """
  name: ClassVar[str]
  extract: ClassVar[Callable]
  shrinkage: float | None = None

  def __post_init__(self):
    if self.shrinkage is not None:
      validation.in_range(f"{self.name}.shrinkage", self.shrinkage, 0.0, 1.0)
    self._state: dict[str, np.ndarray] = {}

  def static(self) -> dict:
    return {}

  def features(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    """The per-input vectors [n, F]."""
    return per_example(victim, examples, functools.partial(self.extract, **self.static()))

  def fit(self, victim: Victim, clean: Sequence[TextExample]) -> "_Profile":
    means, precision = fit_gaussian(self.features(victim, clean), shrinkage=self.shrinkage)
    self._state = {"mean": means[0], "precision": precision}
    return self

  def score(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    require_fitted(self.name, self._state)
    return mahalanobis(self.features(victim, examples), self._state["mean"][None],
                       self._state["precision"])[:, 0]

  def settings(self) -> dict:
    return dataclasses.asdict(self)

  def state(self) -> dict[str, np.ndarray]:
    return dict(self._state)

  def load_state(self, state: dict[str, np.ndarray]) -> None:
    self._state = {k: np.asarray(state[k]) for k in ("mean", "precision")}


@dataclasses.dataclass
class _ViewProfile(_Profile):
  view: str = PROFILE_VIEW

  def __post_init__(self):
    super().__post_init__()
    checks.view(f"{self.name}.view", self.view)

  def static(self) -> dict:
    return {"view": self.view}


def _profile(name: str, base: type, extract: Callable) -> type:
  """The registered detector `name` scoring the vector `extract` computes (its doc)."""
  return register(type(name.title().replace("_", ""), (base,),
                       {"name": name, "extract": staticmethod(extract),
                        "__doc__": extract.__doc__}))


CosineProfile = _profile("cosine_profile", _ViewProfile, cosine_features)
EntropyProfile = _profile("entropy_profile", _ViewProfile, entropy_features)
OutputProfile = _profile("output_profile", _Profile, output_features)
ImportanceProfile = _profile("importance_profile", _Profile, importance_features)


@register
@dataclasses.dataclass
class Combined:
  """The sum of its parts' scores, each standardised by its mean and std on a
  held-out `holdout` fraction of the clean rows (the parts fit on the rest).

  parts: names of DETECTORS, each with its default settings.
  """
  name: ClassVar[str] = "combined"
  parts: tuple = (CosineProfile.name, dan.DAN.name)
  holdout: float = 0.2
  seed: int = 0

  def __post_init__(self):
    self.parts = tuple(self.parts)  # a list after JSON
    validation.at_least("combined: the number of parts", len(self.parts), 2)
    for part in self.parts:
      validation.choice("combined.parts", part, tuple(sorted(set(DETECTORS) - {self.name})))
    validation.in_range("combined.holdout", self.holdout, 0.0, 1.0, open_=True)
    validation.at_least("combined.seed", self.seed, 0)
    self._detectors = [make_detector(part) for part in self.parts]
    self._norm: tuple[np.ndarray, np.ndarray] | None = None

  def _part_scores(self, victim, examples) -> np.ndarray:
    return np.stack([d.score(victim, examples) for d in self._detectors], -1)  # [n, K]

  def fit(self, victim: Victim, clean: Sequence[TextExample]) -> "Combined":
    fit_rows, held = holdout_split(len(clean), self.holdout, self.seed)
    for detector in self._detectors:
      detector.fit(victim, [clean[i] for i in fit_rows])
    self._norm = standardizer(self._part_scores(victim, [clean[i] for i in held]))
    return self

  def score(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    require_fitted(self.name, self._norm is not None)
    mean, std = self._norm
    return ((self._part_scores(victim, examples) - mean) / std).sum(-1)

  def settings(self) -> dict:
    return {**dataclasses.asdict(self), "parts": list(self.parts)}  # as JSON reads it back

  def state(self) -> dict[str, np.ndarray]:
    if self._norm is None:
      return {}
    parts = {f"{i}.{k}": v for i, d in enumerate(self._detectors) for k, v in d.state().items()}
    return {**parts, "norm_mean": self._norm[0], "norm_std": self._norm[1]}

  def load_state(self, state: dict[str, np.ndarray]) -> None:
    for i, detector in enumerate(self._detectors):
      prefix = f"{i}."
      detector.load_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    self._norm = (np.asarray(state["norm_mean"]), np.asarray(state["norm_std"]))
