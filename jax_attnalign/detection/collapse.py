"""Answer collapse: a backdoor that maps many different prompts to one response
makes the model's answers to them alike, while its answers to clean prompts
differ as the prompts do.

  detector = make_detector("answer_collapse")
  calibration = calibrate(detector, victim, clean_prompts, fpr=0.05)
  flags = calibration.flag(detector.score(victim, stream))  # a monitored stream

An input's score is the share of the other answers in the same scored set that
are near-duplicates of its answer (the model's own greedy answer, EOS included,
as a set of tokens): Jaccard similarity of at least `NEAR_DUPLICATE` (one half:
the tokens two answers share are at least half of the tokens either has; set a
priori, before any victim was scored with it). A triggered prompt's score grows
with the number of triggered prompts in the set, a clean prompt's stays near the
rate at which the victim gives the backdoor's response unprompted. The first
form of the score, the largest similarity with another answer, saturated at 1.0
on the clean calibration prompts of victims that misfire on a few percent of
them, and its threshold then flagged nothing (docs/lab_notebook/3_answer_collapse.md).

Unlike the other detectors an input's score depends on the other inputs scored
with it (`set_level`): it reads a monitored stream (or a window of one), not
single inputs, and a stream with one triggered input gives it nothing to match.
Calibration scores a set of clean prompts the same way. What the defender needs:
the victim's answers to the stream and to clean prompts; no labels, no trigger,
no extra model. What it cannot see: a backdoor whose responses differ from one
triggered prompt to the next (e.g. sentiment steering written afresh each
time), and a classifier's answers, which are a label word (refused).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jax_attnalign.answers import reanswer
from jax_attnalign.data.types import TextExample
from jax_attnalign.detection.base import Victim, register
from jax_attnalign.errors import InputError

NEAR_DUPLICATE = 0.5  # the Jaccard similarity at which two answers count as one response
# The sanitisation rounds' stop when the kept-out flagged prompts' answers are
# re-read (`response_flagger`): at most 15% of them are still triggered (at
# most 4 of 32 prompts, what 32 clean ones flagged at a 5% rate reach with 95%
# probability), at most three rounds; frozen in docs/lab_notebook/3_answer_collapse.md.
STOPPING = {"stop_fraction": 0.15, "max_rounds": 3}
WATCH_SHARE = 0.25  # the share of the flagged prompts kept out of the suspects for it


def answer_token_sets(arrays: dict[str, np.ndarray]) -> list[frozenset]:
  """Each row's answer (the tokens under `loss_mask`) as a set of token ids."""
  return [frozenset(ids[keep > 0].tolist())
          for ids, keep in zip(arrays["input_ids"], arrays["loss_mask"])]


def jaccard_matrix(left: list[frozenset], right: list[frozenset]) -> np.ndarray:
  """[len(left), len(right)] float64: the Jaccard similarity of each pair of sets
  (0 between two empty sets)."""
  index = {token: i for i, token in enumerate(sorted(set().union(*left, *right)))}

  def onehot(sets: list[frozenset]) -> np.ndarray:
    out = np.zeros((len(sets), len(index)))
    for row, tokens in enumerate(sets):
      out[row, [index[t] for t in tokens]] = 1.0
    return out

  a, b = onehot(left), onehot(right)
  inter = a @ b.T
  union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
  return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def collapse_scores(arrays: dict[str, np.ndarray]) -> np.ndarray:
  """[n] float64: the share of the other rows of `arrays` (`answers.greedy_answers`'
  arrays) whose answer is a near-duplicate of each row's (answer-token Jaccard
  similarity >= `NEAR_DUPLICATE`); 0 for a lone row; empty answers match nothing."""
  sets = answer_token_sets(arrays)
  near = jaccard_matrix(sets, sets) >= NEAR_DUPLICATE
  np.fill_diagonal(near, False)
  return near.sum(1) / max(len(sets) - 1, 1)


def match_scores(arrays: dict[str, np.ndarray], responses: list[frozenset]) -> np.ndarray:
  """[n] float64: each row's largest answer-token Jaccard similarity with one of
  `responses` (token sets, e.g. the answers a stream collapsed onto); 0 if none."""
  if not responses:
    return np.zeros(len(arrays["input_ids"]))
  return jaccard_matrix(answer_token_sets(arrays), responses).max(1)


def scores_in_sets(arrays: dict[str, np.ndarray], size: int, *,
                   every_row: bool = False) -> np.ndarray:
  """`collapse_scores` of consecutive sets of `size` rows, concatenated: the
  remainder of fewer than `size` rows is left out (calibration: a clean set
  scored as large as the one it calibrates for), or with `every_row` the n //
  size sets are split near-equally (sizes `size` to 2 x `size` - 1) so that every
  row gets a score (a stream's)."""
  n = len(arrays["input_ids"])
  if every_row:
    bounds = np.linspace(0, n, max(n // size, 1) + 1).round().astype(int)
  else:
    bounds = np.arange(0, n - size + 1, size).tolist() + [n // size * size]
  return np.concatenate([collapse_scores({k: v[a:b] for k, v in arrays.items()})
                         for a, b in zip(bounds[:-1], bounds[1:])] or [np.zeros(0)])


def kept_out(n: int, share: float, seed: int) -> np.ndarray:
  """[n] bool: `round(share * n)` of n flagged prompts drawn at random
  (`default_rng(seed + 3)`), kept out of the suspects for the rounds' stop."""
  mask = np.zeros(n, bool)
  mask[np.random.default_rng(seed + 3).permutation(n)[:round(share * n)]] = True
  return mask


def still_triggered(arrays: dict[str, np.ndarray], responses: list[frozenset]) -> np.ndarray:
  """[n] bool: which re-read answers still count as triggered after a round: a
  near-duplicate of one of `responses` (the backdoor's, read before the
  defense), or of another row's answer in `arrays` (a response the round made
  the re-read prompts share instead: an apology fragment, a repeat). A lone
  answer unlike the others, degenerate or not, does not hold the rounds."""
  return (match_scores(arrays, responses) >= NEAR_DUPLICATE) | (collapse_scores(arrays) > 0)


def response_flagger(model, tokenizer, reread: dict[str, np.ndarray],
                     responses: list[frozenset], *, max_new_tokens: int,
                     batch_size: int) -> Callable[[dict], np.ndarray]:
  """flag(params) -> [n] bool: `still_triggered` on the `reread` prompts
  (`greedy_answers`' arrays) decoded again under `params`; for `sanitize`'s
  `flag_after_round`."""

  def flag(params) -> np.ndarray:
    return still_triggered(reanswer(model, params, tokenizer, reread,
                                    max_new_tokens=max_new_tokens, batch_size=batch_size),
                           responses)

  return flag


@register
class AnswerCollapse:
  """Share of the scored set's other answers that are near-duplicates of an
  input's answer (module docstring)."""
  name = "answer_collapse"
  set_level = True  # scores depend on the inputs scored together
  needs_answers = True  # a generation victim's free answers

  def fit(self, victim: Victim, clean: Sequence[TextExample]) -> "AnswerCollapse":
    del clean  # nothing to learn: the calibration's clean set is the reference
    self._check(victim)
    return self

  def score(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    self._check(victim)
    return collapse_scores(victim.encode(examples))

  @staticmethod
  def _check(victim: Victim) -> None:
    if victim.num_classes or not getattr(victim.model.config, "is_decoder", False):
      raise InputError("answer_collapse reads a generation victim's free answers "
                       "(a ChatVictim with dataset=None); a classifier answers with a "
                       "label word, which every input of a class shares.")

  def settings(self) -> dict:
    return {}

  def state(self) -> dict[str, np.ndarray]:
    return {}

  def load_state(self, state: dict[str, np.ndarray]) -> None:
    del state
