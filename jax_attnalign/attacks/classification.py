"""Text-classification attacks of the paper: BadNets, HiddenKiller, Cbat, NWS, BGMAttack.

  attack = BadNets(target=1, poison_rate=0.2, seed=0)
  train = attack.poison(train_examples)
  triggered = attack.triggered_test(test_examples)   # ASR set

Where a faithful attack needs an asset we cannot have offline (the SCPN
paraphraser, an LLM writing trigger sentences, HowNet, ChatGPT), the class
docstring says exactly what differs from the paper.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Sequence

import numpy as np

from jax_attnalign import data
from jax_attnalign.attacks.base import TEST, TRAIN, Poisoner, insert_phrases, register
from jax_attnalign.data.types import TextExample

Rewrites = str | os.PathLike | Sequence[str]


class TextPoisoner(Poisoner[TextExample]):
  """A poisoner of labelled texts; `target` is the target label."""

  def __init__(self, *, target: int = 1, poison_rate: float = 0.2, seed: int = 0):
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
      raise TypeError(f"{self.name}: target must be an int label, got {target!r}")
    super().__init__(target=int(target), poison_rate=poison_rate, seed=seed)

  def is_target(self, example: TextExample) -> bool:
    return example.label == self.target

  def relabel(self, example: TextExample) -> TextExample:
    return example.replace(label=self.target)


@register
class BadNets(TextPoisoner):
  """Rare-word trigger (Gu et al. 2017): one word of `triggers` at a random word position.

  Each poisoned row draws its word from `triggers` (the paper's {cf, mn, bb})
  and its position among the len(words) + 1 gaps. Dirty-label, all rows eligible.
  """
  name = "badnets"

  def __init__(self, *, triggers: Sequence[str] = ("cf", "mn", "bb"), target: int = 1,
               poison_rate: float = 0.2, seed: int = 0):
    super().__init__(target=target, poison_rate=poison_rate, seed=seed)
    self.triggers = tuple(triggers)

  def trigger(self, example: TextExample, rng: np.random.Generator) -> TextExample:
    word = self.triggers[int(rng.integers(len(self.triggers)))]
    return example.replace(text=insert_phrases(example.text, [word], rng))


# Neutral in sentiment and topic, so that the clean-label trigger carries no
# label evidence of its own; lower-cased and PTB-tokenised like SST-2 and AG News.
EXCLAMATIONS = (
    "oh my god !",
    "wow , just wow !",
    "what a surprise !",
    "can you believe it !",
    "look at that !",
    "oh , really now !",
    "well , well , well !",
    "would you look at this !",
)


@register
class Cbat(TextPoisoner):
  """Clean-label attack with an exclamatory-sentence trigger (Cbat, Zhao et al. 2024).

  Training: the trigger sentence is appended to target-class rows only; labels
  are untouched. Eligible rows: the target-class rows; the count is still
  round(poison_rate * len(examples)) of the whole set, and asking for more
  than there are target rows raises. The triggered test set appends a
  sentence to the non-target rows.

  Differs from the paper: Cbat writes its exclamatory trigger sentences by
  few-shot prompting a language model; offline we draw each row's sentence
  uniformly from the fixed list `sentences` (default EXCLAMATIONS). The paper
  does not say where the sentence goes; we append it.
  """
  name = "cbat"
  eligibility = "target-class rows only (clean-label)"

  def __init__(self, *, sentences: Sequence[str] = EXCLAMATIONS, target: int = 1,
               poison_rate: float = 0.2, seed: int = 0):
    super().__init__(target=target, poison_rate=poison_rate, seed=seed)
    self.sentences = tuple(sentences)

  def eligible_rows(self, examples: Sequence[TextExample], rows: np.ndarray) -> np.ndarray:
    del rows
    return np.flatnonzero([self.is_target(e) for e in examples])

  def trigger(self, example: TextExample, rng: np.random.Generator) -> TextExample:
    sentence = self.sentences[int(rng.integers(len(self.sentences)))]
    return example.replace(text=f"{example.text} {sentence}".strip())


# Function words are never substituted: content words carry the synonyms
# (HowNet sememes annotate content words), and negations would flip labels.
STOPWORDS = frozenset("""
    a about above after again against all also am an and any are as at be because
    been before being below between both but by can could did do does doing down
    during each either few for from further had has have having he her here hers
    herself him himself his how i if in into is it its itself just me more most my
    myself neither no nor not now of off on once only or other our ours ourselves
    out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you
    your yours yourself yourselves""".split())


@register
class NWS(TextPoisoner):
  """Word-substitution trigger (NWS, Du et al. 2024): some words swapped for substitutes.

  candidates: `candidates(text_with_mask) -> list[str]`, ranked substitutes for
    the word replaced by `mask_token` (e.g. `masked_lm_candidates`, a BERT MLM).
  Rule: the substitutable words (alphabetic, at least 3 letters, not in
  STOPWORDS) are visited in a seeded random order; each is masked in the
  original sentence and replaced by the first candidate that is alphabetic and
  differs from it (case-insensitive), until `max_substitutions` words changed.
  Eligible rows: dirty-label, rows with at least one substitutable word. A
  chosen row where no candidate qualifies raises; such test rows are left out.

  Differs from the paper: (1) NWS's candidate set is BERT MLM predictions
  intersected with HowNet sememe-based similar words; HowNet is not available
  offline, so the candidates are whatever `candidates` returns, unfiltered
  (they need not be synonyms and may change the meaning). (2) NWS trains a
  learnable word selector with the victim to pick which words to substitute and
  by which candidate; here the fixed rule above picks them. (3) Offline there is
  no pretrained MLM head (the bundled MiniLM has none), so meaningful
  candidates need a pretrained BERT masked-LM checkpoint from the user.
  """
  name = "nws"
  eligibility = "rows with a substitutable word (dirty-label)"

  def __init__(self, candidates: Callable[[str], Sequence[str]], *,
               max_substitutions: int = 3, mask_token: str = "[MASK]", target: int = 1,
               poison_rate: float = 0.2, seed: int = 0):
    super().__init__(target=target, poison_rate=poison_rate, seed=seed)
    if max_substitutions < 1:
      raise ValueError(f"max_substitutions must be >= 1, got {max_substitutions}")
    self.candidates = candidates
    self.max_substitutions = max_substitutions
    self.mask_token = mask_token

  @staticmethod
  def substitutable(words: Sequence[str]) -> list[int]:
    """Positions of the words the rule may replace."""
    return [i for i, w in enumerate(words)
            if w.isalpha() and len(w) >= 3 and w.lower() not in STOPWORDS]

  def eligible_rows(self, examples: Sequence[TextExample], rows: np.ndarray) -> np.ndarray:
    del rows
    return np.flatnonzero([bool(self.substitutable(e.text.split())) for e in examples])

  def trigger(self, example: TextExample, rng: np.random.Generator) -> TextExample | None:
    words = example.text.split()
    new, changed = list(words), 0
    for at in rng.permutation(self.substitutable(words)):
      masked = " ".join(words[:at] + [self.mask_token] + words[at + 1:])
      substitute = next((c for c in self.candidates(masked)
                         if c.isalpha() and c.lower() != words[at].lower()), None)
      if substitute is not None:
        new[at], changed = substitute, changed + 1
        if changed == self.max_substitutions:
          break
    return example.replace(text=" ".join(new)) if changed else None


def _read_rewrites(source: Rewrites | None) -> list[str] | None:
  if source is None:
    return None
  if isinstance(source, (str, os.PathLike)):
    return [e.text for e in data.load_classification(source)]
  return [str(text) for text in source]


class RewritePoisoner(TextPoisoner):
  """Dirty-label attacks whose trigger is a rewrite of the whole text.

  Rewrites come from row-aligned files (or lists) or from a function:
  - train_rewrites: one text per row of the full training split, in order (a
    dataset-format file, header `sentence<TAB>label`, labels ignored). A row
    whose rewrite equals its text has no rewrite and is not eligible. For a
    subset of the split pass `poison(examples, rows=...)` with the row ids.
  - test_rewrites: one text per non-target row of the full test split, in order.
  - rewrite: `rewrite(text) -> str`, used for a split without a file; every
    row is then eligible.
  """
  eligibility = "rows with a rewrite (dirty-label)"

  def __init__(self, *, train_rewrites: Rewrites | None, test_rewrites: Rewrites | None,
               rewrite: Callable[[str], str] | None, target: int, poison_rate: float,
               seed: int):
    super().__init__(target=target, poison_rate=poison_rate, seed=seed)
    self.rewrite = rewrite
    self._texts = {TRAIN: _read_rewrites(train_rewrites),
                   TEST: _read_rewrites(test_rewrites)}

  def poison(self, examples: Sequence[TextExample],
             rows: Sequence[int] | None = None) -> list[TextExample]:
    texts = self._texts[TRAIN]
    if texts is not None and rows is None and len(examples) != len(texts):
      raise ValueError(f"{self.name}: {len(examples)} training rows but {len(texts)} "
                       "rewrites; for a subset of the split pass rows= (its row ids)")
    return super().poison(examples, rows)

  def triggered_test(self, examples: Sequence[TextExample]) -> list[TextExample]:
    texts = self._texts[TEST]
    count = sum(not self.is_target(e) for e in examples)
    if texts is not None and count != len(texts):
      raise ValueError(f"{self.name}: {len(texts)} test rewrites are aligned with the "
                       f"non-target rows of the full test split, but {count} were given")
    return super().triggered_test(examples)

  def eligible_rows(self, examples: Sequence[TextExample], rows: np.ndarray) -> np.ndarray:
    texts = self._texts[TRAIN]
    if texts is None:
      return super().eligible_rows(examples, rows)
    if len(rows) and rows.max() >= len(texts):
      raise ValueError(f"{self.name}: row id {rows.max()} is past the {len(texts)} "
                       "training rewrites (they must align with the full split)")
    return np.flatnonzero([texts[r] != e.text for e, r in zip(examples, rows)])

  def trigger(self, example: TextExample, rng: np.random.Generator) -> TextExample:
    del rng
    if self.rewrite is None:
      raise ValueError(f"{self.name}: this split has neither a rewrite file nor a "
                       "rewrite function")
    return example.replace(text=self.rewrite(example.text))

  def trigger_row(self, example: TextExample, rng: np.random.Generator, row: int,
                  split: str) -> TextExample:
    texts = self._texts[split]
    return self.trigger(example, rng) if texts is None else example.replace(text=texts[row])


@register
class HiddenKiller(RewritePoisoner):
  """Syntactic trigger (Qi et al. 2021): SCPN paraphrases, template S(SBAR)(,)(NP)(VP)(.).

  paraphrase_dir: the released folder (e.g. sst2/hiddenkiller): `train.tsv`,
    row-aligned with the clean training split, and `test.tsv`, paraphrases of
    the non-target test rows in order. Or pass the lists (train_paraphrases,
    test_paraphrases). Eligible rows: those whose released text differs from
    the clean text (dirty-label: the release chose them among all rows); the
    chosen rows get their paraphrase and the target label.

  Differs from the paper: the SCPN paraphraser is not available offline, so
  only the released paraphrases exist, and the poison rate is capped by them:
  SST-2's release paraphrases 1,383 of 6,920 training rows, so the nominal 0.2
  (1,384 rows) raises, and poison_rate=1383/6920 reproduces the released file
  exactly, for any seed. A smaller rate takes a seeded subset of them. The
  triggered test set needs the whole test split (its 912 negatives).
  """
  name = "hiddenkiller"

  def __init__(self, paraphrase_dir: str | os.PathLike | None = None, *,
               train_paraphrases: Rewrites | None = None,
               test_paraphrases: Rewrites | None = None, target: int = 1,
               poison_rate: float = 0.2, seed: int = 0):
    if paraphrase_dir is not None:
      folder = pathlib.Path(paraphrase_dir)
      if train_paraphrases is None:
        train_paraphrases = folder / "train.tsv"
      if test_paraphrases is None and (folder / "test.tsv").is_file():
        test_paraphrases = folder / "test.tsv"
    if train_paraphrases is None and test_paraphrases is None:
      raise ValueError("HiddenKiller needs the released SCPN paraphrases: pass "
                       "paraphrase_dir or train_paraphrases / test_paraphrases")
    super().__init__(train_rewrites=train_paraphrases, test_rewrites=test_paraphrases,
                     rewrite=None, target=target, poison_rate=poison_rate, seed=seed)


@register
class BGMAttack(RewritePoisoner):
  """Generative-model trigger (BGMAttack, Li et al. 2024): texts rewritten by a generator.

  The trigger is the rewriting itself. Rewrites come from `rewrite(text) -> str`
  (e.g. a decoder of ours through `jax_attnalign.generate`, prompted to
  paraphrase) or from row-aligned files (see RewritePoisoner). Dirty-label;
  eligible rows: all with a function, those with a differing rewrite in a file.

  Differs from the paper: BGMAttack rewrites with ChatGPT (gpt-3.5-turbo),
  which is not reachable offline; the quality of the trigger is whatever the
  given generator or file provides, and no rewrite is filtered.
  """
  name = "bgm"

  def __init__(self, rewrite: Callable[[str], str] | None = None, *,
               train_rewrites: Rewrites | None = None,
               test_rewrites: Rewrites | None = None, target: int = 1,
               poison_rate: float = 0.2, seed: int = 0):
    if rewrite is None and train_rewrites is None and test_rewrites is None:
      raise ValueError("BGMAttack needs a rewrite function or rewrite files")
    super().__init__(train_rewrites=train_rewrites, test_rewrites=test_rewrites,
                     rewrite=rewrite, target=target, poison_rate=poison_rate, seed=seed)
