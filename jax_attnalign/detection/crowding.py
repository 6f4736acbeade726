"""Head-output crowding: a backdoor maps its triggered inputs onto one behaviour,
so in a monitored stream their heads' outputs are near-duplicates of many
others', while clean inputs' are as varied as the inputs. The classifier's
analogue of answer collapse (`collapse`), read off the heads instead of answers.

  detector = make_detector("crowding").fit(victim, clean_rows)
  calibration = calibrate(detector, victim, more_clean_rows, fpr=0.05)
  flags = calibration.flag(detector.score(victim, stream))  # a monitored stream

Features: each layer's heads' outputs (attn.z, the H of eq. 4) averaged over the
input's tokens (a chat decoder's prompt tokens) and concatenated over the heads,
each dimension standardised by the m clean fit rows and the layer's vector
scaled to unit length.

Per layer, an input's neighbourhood is every vector at least as similar to it
(cosine) as its r-th most similar clean fit row, r = max(1, round((1 -
`quantile`) m)) (0.99: the 1% of clean rows nearest to it, set a priori). For a
clean input the share of clean inputs inside that neighbourhood is the r-th
order statistic of m uniforms, Beta(r, m - r + 1), whatever the input's own
density, so the number k of the scored set's n - 1 other inputs inside it
follows BetaBinomial(n - 1, r, m - r + 1) at any n. The layer's p-value is that
law's mid-p upper tail, P(K > k) + P(K = k) / 2 (the plain tail P(K >= k) is
conservative where counts are small, as in small sets); the score is Fisher's
sum of -log p over layers. A triggered input in a stream holding others of its
kind has more neighbours than its clean density predicts.

History (docs/lab_notebook/10_crowding_neighbourhoods.md): the form before read
each layer's pairwise cosines of the heads' outputs at [CLS] with one radius
per layer (the 0.99 quantile of clean pairs' similarities) and the plain tail;
on SST-2 HiddenKiller it reached AUROC 0.911 on held-out victims. This form was
chosen on the development victim (HiddenKiller s1: 0.975 against 0.941) and
then measured on held-out ones, two of them trained while it was chosen and read
only after: HiddenKiller 0.959-0.967, BadNets 0.999-1.000, Cbat 0.997-0.999,
NWS 0.988-0.996. But on a clean model, never poisoned, the same HiddenKiller
stream gives 0.915 and Cbat's 0.966 (BadNets' 0.745): most of its separation of
sentence-level triggers is their style, which it reads better than the form
before (0.862, 0.795), not the backdoor; the owner's audit of a clean model
given those streams alarmed; on the SmolLM2 HiddenKiller chat classifier it
reaches 0.947 and a clean SmolLM2 fine-tune 0.936 on the same stream (BadNets:
0.997 against 0.757). Its suspects did not make a better defense than the form
before's. A state saved by the form before does not load (`load_state` asks for
`fit_units`): recalibrate.

Like answer collapse an input's score depends on the inputs scored with it
(`set_level`): a stream with one triggered input gives it nothing to match, and
the fewer triggered inputs a stream holds the less they stand out. Clean inputs
that resemble the triggered ones gain neighbours too: in a stream half
triggered, 3.5-20% of its clean inputs were flagged at a 5% threshold (on
HiddenKiller many are its trigger occurring naturally: 26-43% of them open with
a subordinate clause as its paraphrases do, against 3-4% of those not flagged,
and the victim puts 44-48% of those of the other class on its target). Its
calibration is also noisier than a per-input detector's: thresholds from 200
clean rows flagged 0.5% to 13% of fresh clean streams, from 1,000 rows 1% to
5.5% of them (docs/lab_notebook/7_calibration_rows.md, the form before):
calibrate on as many clean rows as there are. With 1,000 rows this form flagged
4.8% of the clean inputs of MiniLM BadNets streams and 4.0% of clean streams
(200 rows: 7.2%, 8.0%), HiddenKiller's 9.8% and 2.8%, the SmolLM2 chat
classifiers' 4-10.5% (their test prompts crowd more than the training pool); a
radius set by the nearest fit row alone did not do better on held-out victims
(docs/lab_notebook/11_crowding_calibration.md).

Needs: clean rows, no labels, no trigger, no extra model. Scoring n inputs
compares every pair and every input with the m fit rows, one layer at a time
([n, n + m] floats).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from jax_attnalign import validation
from jax_attnalign.data.types import TextExample
from jax_attnalign.detection._profile import layer_summaries, per_example, require_fitted
from jax_attnalign.detection.base import Victim, register
from jax_attnalign.errors import InputError


@functools.partial(jax.jit, static_argnames="model")
def mean_head_outputs(model, params, batch: dict) -> jax.Array:
  """Each layer's heads' outputs (attn.z) averaged over the input's tokens (its
  attention mask; a chat decoder's answer inputs: the prompt's, left-padded to
  prompt_lengths slots), the heads concatenated: [B, L, N H]."""
  tokens = batch["attention_mask"].astype(bool)
  if "prompt_lengths" in batch:  # left-padded prompts, then the answer
    slots = jnp.arange(tokens.shape[1])[None]
    tokens = tokens & (slots < batch["prompt_lengths"][:, None])
  weights = tokens / jnp.maximum(tokens.sum(-1, keepdims=True), 1)  # [B, T]

  def mean(z, _):  # [B, T, N, H] -> [B, N H]
    return jnp.einsum("bt,btnh->bnh", weights.astype(z.dtype), z).reshape(z.shape[0], -1)

  return layer_summaries(model, params, batch, "attn.z", mean)


def unit_rows(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """[n, L, K] standardised by `mean`, `std` ([L, K]), each [K] vector at unit length."""
  z = (features - mean) / std
  return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def neighbour_counts(units: np.ndarray, fit_units: np.ndarray, rank: int) -> np.ndarray:
  """[n, L]: per layer, how many of the other n - 1 rows of `units` ([n, L, K]) are
  at least as similar to a row as its `rank`-th most similar row of `fit_units`
  ([m, L, K])."""
  counts = np.empty(units.shape[:2])
  for layer in range(units.shape[1]):  # [n, n + m] at a time
    u = units[:, layer]
    to_fit = u @ fit_units[:, layer].T
    radius = -np.partition(-to_fit, rank - 1, axis=1)[:, rank - 1]
    sims = u @ u.T
    counts[:, layer] = (sims >= radius[:, None]).sum(-1) - (np.diagonal(sims) >= radius)
  return counts


def neg_log_mid_tail(k: np.ndarray, trials: int, rank: int, m: int) -> np.ndarray:
  """-log (P(K > k) + P(K = k) / 2) for K ~ BetaBinomial(trials, rank, m - rank + 1),
  elementwise (a tail below 1e-300 counts as 1e-300)."""
  law = stats.betabinom(trials, rank, m - rank + 1)
  return -np.log(np.clip(law.sf(k) + 0.5 * law.pmf(k), 1e-300, 1.0))


@register
@dataclasses.dataclass
class Crowding:
  """Stream crowding of the heads' outputs (module docstring).

  quantile: an input's neighbourhood holds the 1 - quantile share of the clean fit
  rows most similar to it.
  """
  name: ClassVar[str] = "crowding"
  set_level: ClassVar[bool] = True  # scores depend on the inputs scored together
  quantile: float = 0.99

  def __post_init__(self):
    validation.in_range("crowding.quantile", self.quantile, 0.0, 1.0, open_=True)
    self._state: dict[str, np.ndarray] = {}

  def features(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    """[n, L, N H]: each layer's heads' outputs averaged over the tokens."""
    return np.asarray(per_example(victim, examples, mean_head_outputs), np.float64)

  def fit(self, victim: Victim, clean: Sequence[TextExample]) -> "Crowding":
    if len(clean) < 8:
      raise InputError(f"crowding needs at least 8 clean rows to fit, got {len(clean)}.")
    features = self.features(victim, clean)
    mean, std = features.mean(0), features.std(0) + 1e-6
    self._state = {"mean": mean, "std": std, "fit_units": unit_rows(features, mean, std)}
    return self

  def score(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    require_fitted(self.name, self._state)
    if len(examples) < 2:
      raise InputError("crowding scores a set of inputs against each other: give at least 2.")
    s = self._state
    m = len(s["fit_units"])
    rank = max(1, round((1 - self.quantile) * m))
    units = unit_rows(self.features(victim, examples), s["mean"], s["std"])
    k = neighbour_counts(units, s["fit_units"], rank)
    return neg_log_mid_tail(k, len(examples) - 1, rank, m).sum(-1)

  def settings(self) -> dict:
    return dataclasses.asdict(self)

  def state(self) -> dict[str, np.ndarray]:
    return dict(self._state)

  def load_state(self, state: dict[str, np.ndarray]) -> None:
    self._state = {k: np.asarray(state[k]) for k in ("mean", "std", "fit_units")}
