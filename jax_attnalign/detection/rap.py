"""RAP (Yang et al. 2021, "RAP: Robustness-Aware Perturbations for Defending against
Backdoor Attacks on NLP Models"): a trained rare word that shakes clean inputs'
predictions but not triggered ones'.

  detector = make_detector("rap", word="tq", protected=1).fit(victim, clean)
  scores = detector.score(victim, incoming)  # higher = more likely triggered

The rule: the rare `word` (one token of the victim's tokenizer) is put before
each input's text. Only its input-embedding row is trained, the victim frozen,
on the clean rows of the `protected` class that the victim predicts as
protected, so that inserting it drops the protected class's probability by a
margin in [lower, upper]: per row, with drop = p(before) - p(after),
  loss = scale * relu(lower - drop) + relu(drop - upper),
averaged over a batch; Adam steps on that row alone (optax, `learning_rate`,
`epochs` over the rows in batches of `batch_size`, seeded order), each followed
by rescaling the row to its original norm. A triggered input's prediction is
held by its trigger, so the word barely moves it. Score: minus the drop for inputs predicted as the
protected class; inputs predicted otherwise are not suspects and score
NOT_PROTECTED (-2, below any -drop >= -1). The threshold is `calibrate`'s
(1 - fpr) quantile of clean scores: RAP's clean false-rejection-rate rule.

What the defender needs: clean labelled rows (of the protected class: labels
pick the training rows), the protected class itself (the attack's target,
which RAP assumes known), and gradients through the victim. No extra model.
The fitted state is the trained embedding row (`state()`: {"row": [D]}).

What differs from the paper: RAP's code (and OpenBackdoor's RAPDefender: lr
1e-2, 5 epochs, drop range [0.1, 0.3], our defaults) takes plain gradient
steps; at lr 1e-2 these hardly moved the row of our MiniLM SST-2 BadNets victim
(AUROC 0.72, against 0.999 with Adam at 1e-2, word "tq"), so we step with Adam.
RAP takes a split word's first sub-token; we require a word of one token.
OpenBackdoor trains on every clean dev row; we train on the protected class's
rows, as the paper does, and of those only the ones predicted as protected
(the others could not be scored). RAP's word "cf" is one of the BadNets
triggers ("cf", "mn", "bb"): against that attack the RAP word would be the
trigger itself (AUROC 0.84 on the victim above), so our default is "tq",
another rare one-token word. Both choices (Adam, "tq") were made on the seed-0
victims, which are therefore tuning victims for RAP; its held-out numbers are
the other seeds'.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jax_attnalign import validation
from jax_attnalign.data import iterate_batches
from jax_attnalign.data.types import TextExample
from jax_attnalign.detection.base import Victim, register, require_classes
from jax_attnalign.models import MODEL_INPUTS
from jax_attnalign.train import cut_padding

NOT_PROTECTED = -2.0  # the score of an input not predicted as the protected class
_TABLES = (("embeddings", "word_embeddings", "embedding"),  # BERT
           ("embed_tokens", "embedding"))  # Llama


@register
class RAP:
  """Minus the protected-class probability drop caused by a trained word (module docstring)."""
  name = "rap"
  needs_classes = True  # reads the victim's class probabilities

  def __init__(self, word: str = "tq", protected: int = 1, lower: float = 0.1,
               upper: float = 0.3, scale: float = 1.0, learning_rate: float = 1e-2,
               epochs: int = 5, batch_size: int = 32, seed: int = 0):
    if not isinstance(word, str) or not word.strip() or len(word.split()) != 1:
      raise ValueError(f"RAP.word must be one word, got {word!r}.")
    validation.at_least("RAP.protected", protected, 0)
    validation.in_range("RAP.lower", lower, 0.0, 1.0)
    validation.in_range("RAP.upper", upper, lower, 1.0)
    validation.rate("RAP.scale", scale)
    validation.rate("RAP.learning_rate", learning_rate)
    validation.at_least("RAP.epochs", epochs, 1)
    validation.at_least("RAP.batch_size", batch_size, 1)
    validation.at_least("RAP.seed", seed, 0)
    self.word, self.protected, self.lower, self.upper, self.scale = (word, protected, lower,
                                                                     upper, scale)
    self.learning_rate, self.epochs, self.batch_size, self.seed = (learning_rate, epochs,
                                                                   batch_size, seed)
    self.row = None  # the trained embedding row [D]

  def settings(self) -> dict:
    return {"word": self.word, "protected": self.protected, "lower": self.lower,
            "upper": self.upper, "scale": self.scale, "learning_rate": self.learning_rate,
            "epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed}

  def state(self) -> dict[str, np.ndarray]:
    return {} if self.row is None else {"row": self.row}

  def load_state(self, state: dict[str, np.ndarray]) -> None:
    row = np.asarray(state["row"], np.float32)
    if row.ndim != 1 or not np.isfinite(row).all():
      raise ValueError(f"RAP state needs a finite embedding row [D], got shape {row.shape}")
    self.row = row

  def token(self, tokenizer) -> int:
    """The word's token id; a word the tokenizer splits is refused."""
    ids = tokenizer(self.word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
      raise ValueError(f"RAP.word {self.word!r} is {len(ids)} tokens for this tokenizer; "
                       "choose a rare word that is one token.")
    return ids[0]

  def inserted(self, examples: Sequence[TextExample]) -> list[TextExample]:
    """The examples with the word before their text."""
    return [e.replace(text=f"{self.word} {e.text}") for e in examples]

  def fit(self, victim: Victim, clean: Sequence[TextExample]) -> "RAP":
    require_classes(self.name, victim)
    token, classes = self.token(victim.tokenizer), victim.num_classes
    if self.protected >= classes:
      raise ValueError(f"RAP.protected is {self.protected}; the victim has {classes} classes.")
    rows = [e for e in clean if e.label == self.protected]
    probs = victim.probabilities(rows) if rows else np.zeros((0, classes))
    keep = np.flatnonzero(probs.argmax(-1) == self.protected)
    if not keep.size:
      raise ValueError(f"RAP.fit: no clean row of class {self.protected} is predicted as it.")
    arrays = {k: v for k, v in victim.class_inputs(self.inserted([rows[k] for k in keep])).items()
              if k in MODEL_INPUTS}
    if not (arrays["input_ids"] == token).any(1).all():
      raise ValueError(f"RAP.word {self.word!r} is tokenised differently inside the inputs "
                       "than alone, so its trained row would never be read; choose a word "
                       "that stays one token in context (BPE: a merge without a leading space).")
    arrays["before"] = probs[keep, self.protected].astype(np.float32)
    row = _table(victim.params)[token]
    norm, optimizer = jnp.linalg.norm(row), optax.adam(self.learning_rate)
    opt_state = optimizer.init(row)

    def loss(row, params, batch):
      logits = victim.class_logits(_with_row(params, token, row), batch)
      drop = batch["before"] - jax.nn.softmax(logits.astype(jnp.float32))[:, self.protected]
      return jnp.mean(self.scale * jax.nn.relu(self.lower - drop)
                      + jax.nn.relu(drop - self.upper))

    @jax.jit
    def step(row, opt_state, params, batch):
      updates, opt_state = optimizer.update(jax.grad(loss)(row, params, batch), opt_state)
      row = optax.apply_updates(row, updates)
      return row * norm / jnp.maximum(jnp.linalg.norm(row), 1e-12), opt_state

    for epoch in range(self.epochs):
      for batch in iterate_batches(arrays, self.batch_size, seed=self.seed, epoch=epoch):
        row, opt_state = step(row, opt_state, victim.params, cut_padding(batch, 16))
    self.row = np.asarray(row, np.float32)
    return self

  def with_row(self, params, tokenizer):
    """The victim's params with the word's embedding row set to the trained one."""
    if self.row is None:
      raise ValueError("RAP: call fit (or load_state) before scoring.")
    return _with_row(params, self.token(tokenizer), self.row)

  def score(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    if not examples:
      return np.zeros(0)
    edited = dataclasses.replace(victim, params=self.with_row(victim.params, victim.tokenizer))
    before = victim.probabilities(examples)
    drop = before[:, self.protected] - edited.probabilities(self.inserted(examples))[
        :, self.protected]
    return np.where(before.argmax(-1) == self.protected, -drop, NOT_PROTECTED).astype(np.float64)


def _table_path(flat: dict) -> tuple:
  path = next((p for p in _TABLES if p in flat), None)
  if path is None:
    raise ValueError("RAP: the victim's params hold no word-embedding table at "
                     f"{['/'.join(p) for p in _TABLES]}.")
  return path


def _table(params):
  flat = traverse_util.flatten_dict(params)
  return jnp.asarray(flat[_table_path(flat)])


def _with_row(params, token: int, row):
  """params with row `token` of the word-embedding table set to `row` (jit-safe)."""
  flat = traverse_util.flatten_dict(params)
  path = _table_path(flat)
  flat[path] = jnp.asarray(flat[path]).at[token].set(jnp.asarray(row, flat[path].dtype))
  return traverse_util.unflatten_dict(flat)
