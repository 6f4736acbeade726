"""STRIP (Gao et al. 2019, "STRIP: A Defence Against Trojan Attacks on Deep Neural
Networks"; its text form in Gao et al. 2021, "Design and Evaluation of a
Multi-Domain Trojan Detection Method on Deep Neural Networks").

  detector = make_detector("strip", repeats=20, swap_ratio=0.5).fit(victim, clean)
  scores = detector.score(victim, incoming)  # higher = more likely triggered

The rule: each input gets `repeats` perturbed copies; a copy replaces
round(swap_ratio * n) of the input's n words (at least one, at distinct
positions drawn uniformly) with words drawn uniformly from the distinct words
of the clean texts.
The input's score is minus the mean, over its copies, of the victim's
prediction entropy (natural log). A trigger that survives the perturbation
keeps the prediction confident (low entropy, high score); a clean input loses
its meaning and the prediction its confidence.

Copies are drawn from np.random.default_rng([seed, crc32(text)]): an input's
score depends on its text and the seed alone, not on the other inputs scored
with it.

What the defender needs: clean texts (`fit` keeps their distinct words; no
labels), and the victim's probabilities. No extra model.

What differs from the paper line: Gao et al. superimpose held-out clean
samples; OpenBackdoor's STRIPDefender swaps words for the top TF-IDF words
of one random clean sentence (positions drawn with replacement, 5 copies by
default). Ours draws each replacement uniformly from the clean vocabulary (most
of whose words are, like top TF-IDF words, content words; drawing them by
frequency gave mostly stop words and a lower AUROC on the small BadNets test
victim), at distinct positions, 20 copies by default. Its threshold is the clean
false-rejection-rate quantile of the entropy, which `calibrate` reproduces
on the negated scale.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from jax_attnalign import validation
from jax_attnalign.data.types import TextExample
from jax_attnalign.detection.base import Victim, register, require_classes


@register
class STRIP:
  """Minus the mean prediction entropy over word-swapped copies (module docstring)."""
  name = "strip"
  needs_classes = True  # reads the victim's class probabilities

  def __init__(self, repeats: int = 20, swap_ratio: float = 0.5, seed: int = 0):
    validation.at_least("STRIP.repeats", repeats, 1)
    validation.in_range("STRIP.swap_ratio", swap_ratio, 0.0, 1.0)
    validation.at_least("STRIP.seed", seed, 0)
    self.repeats, self.swap_ratio, self.seed = repeats, swap_ratio, seed
    self.words = np.zeros(0, str)  # the clean texts' distinct words

  def settings(self) -> dict:
    return {"repeats": self.repeats, "swap_ratio": self.swap_ratio, "seed": self.seed}

  def state(self) -> dict[str, np.ndarray]:
    return {"words": self.words} if self.words.size else {}

  def load_state(self, state: dict[str, np.ndarray]) -> None:
    words = np.asarray(state["words"], str)
    if words.ndim != 1 or not words.size:
      raise ValueError(f"STRIP state needs a [n >= 1] array of words, got shape {words.shape}")
    self.words = words

  def fit(self, victim: Victim, clean: Sequence[TextExample]) -> "STRIP":
    require_classes(self.name, victim)  # the pool is the clean texts' words alone
    words = sorted({w for e in clean for w in e.text.split()})
    if not words:
      raise ValueError("STRIP.fit: the clean texts hold no words to draw replacements from.")
    self.load_state({"words": np.array(words)})
    return self

  def perturbed(self, examples: Sequence[TextExample]) -> list[TextExample]:
    """The `repeats` copies of each example, example by example ([n * repeats])."""
    if not self.words.size:
      raise ValueError("STRIP: call fit (or load_state) before scoring.")
    copies = []
    for example in examples:
      words = example.text.split()
      rng = np.random.default_rng([self.seed, zlib.crc32(example.text.encode())])
      swaps = max(1, round(self.swap_ratio * len(words))) if words else 0
      for _ in range(self.repeats):
        copy = list(words)
        for at, word in zip(rng.choice(len(words), swaps, replace=False),
                            rng.choice(self.words, swaps)):
          copy[at] = str(word)
        copies.append(example.replace(text=" ".join(copy)))
    return copies

  def score(self, victim: Victim, examples: Sequence[TextExample]) -> np.ndarray:
    if not examples:
      return np.zeros(0)
    probs = victim.probabilities(self.perturbed(examples)).astype(np.float64)
    entropy = -np.sum(probs * np.log(np.maximum(probs, np.finfo(np.float64).tiny)), axis=-1)
    return -entropy.reshape(len(examples), self.repeats).mean(axis=1)
