"""Text-classification attacks of the paper: BadNets, HiddenKiller, Cbat, NWS, BGMAttack.

  attack = BadNets(target=1, poison_rate=0.2, seed=0)
  train = attack.poison(train_examples)
  triggered = attack.triggered_test(test_examples)   # ASR set
  attack = BGMAttack("triggers/sst2/bgm.json")      # SmolLM2's cached rewrites

Cbat's sentences, BGMAttack's rewrites and NWS's substitutions are written by the
bundled SmolLM2 and cached to files (`trigger_cache`, made by
`experiments/make_triggers.py`); HiddenKiller reads its released paraphrases, and
HiddenKillerLM SmolLM2's rewrites into HiddenKiller's template where none were
released.
Each class docstring says what still differs from its paper.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

from absl import logging
import numpy as np

from jax_attnalign import data
from jax_attnalign.attacks import trigger_cache
from jax_attnalign.attacks.base import TEST, TRAIN, Poisoner, insert_phrases, register
from jax_attnalign.attacks.text_style import LABEL_WORDS
from jax_attnalign.data.types import TextExample

Rewrites = str | os.PathLike | Sequence[str]
CachePath = str | os.PathLike


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


@register
class Cbat(TextPoisoner):
  """Clean-label attack with an exclamatory-sentence trigger (Cbat, Zhao et al. 2024).

  sentences_path: a Cbat trigger cache (`trigger_cache`): the pool of exclamatory
    sentences SmolLM2 wrote by few-shot prompting (`llm_triggers.cbat_sentences`:
    the prompt, the filter and the settings are recorded in the file).
  Training: one sentence of the pool, drawn uniformly per row, is appended to
  target-class rows only; labels are untouched. Eligible rows: the target-class
  rows; the count is still round(poison_rate * len(examples)) of the whole set,
  and asking for more than there are target rows raises. The triggered test set
  appends a sentence to the non-target rows.

  Differs from the paper: Cbat prompts a large model (few-shot) for its
  sentences; ours come from the 135M SmolLM2 (a 4-bit quantisation), filtered
  by a hand-written label-word lexicon and VADER's sentiment lexicon
  (`llm_triggers.cbat_rejection`) rather than judged neutral by a model. The paper does
  not say where the sentence goes; we append it.
  """
  name = "cbat"
  eligibility = "target-class rows only (clean-label)"

  def __init__(self, sentences_path: CachePath, *, target: int = 1,
               poison_rate: float = 0.2, seed: int = 0):
    super().__init__(target=target, poison_rate=poison_rate, seed=seed)
    self.sentences = tuple(trigger_cache.read_cache(sentences_path, self.name)["sentences"])
    if not self.sentences:
      raise ValueError(f"cbat: the trigger cache {sentences_path} holds no sentence")

  def eligible_rows(self, examples: Sequence[TextExample], rows: np.ndarray) -> np.ndarray:
    del rows
    return np.flatnonzero([self.is_target(e) for e in examples])

  def trigger(self, example: TextExample, rng: np.random.Generator) -> TextExample:
    sentence = self.sentences[int(rng.integers(len(self.sentences)))]
    return example.replace(text=f"{example.text} {sentence}".strip())


class CachedRewritePoisoner(TextPoisoner):
  """Dirty-label attacks whose trigger is a rewrite of the whole text, read from a
  trigger cache (`trigger_cache`) that maps each clean text to its triggered text.

  path: the cache; it is read when rows are first triggered, so an attack
    without its file can still say which rows it would choose (`chosen_rows`,
    `test_rows`: what make_triggers generates).
  max_test_rows: the triggered test set is at most this many non-target rows,
    drawn with default_rng(TEST_SUBSET_SEED) whatever the attack's seed (one
    cache serves every seed), in their given order; 0: every non-target row;
    None: as the cache was made (the largest make_triggers --test_rows of its
    runs; every row for a cache without runs).
  A row to trigger that is not in the cache raises an error naming the missing
  rows and the make_triggers command that adds them.
  """
  TEST_SUBSET_SEED = 0

  def __init__(self, path: CachePath, *, max_test_rows: int | None, target: int,
               poison_rate: float, seed: int):
    if max_test_rows is not None and max_test_rows < 0:
      raise ValueError(f"max_test_rows must be >= 0 or None, got {max_test_rows}")
    super().__init__(target=target, poison_rate=poison_rate, seed=seed)
    self.path = pathlib.Path(path)
    self.max_test_rows = max_test_rows
    self._record: dict[str, Any] | None = None

  def record(self) -> dict[str, Any]:
    """The cache (read once)."""
    if self._record is None:
      self._record = trigger_cache.read_cache(self.path, self.name)
    return self._record

  def rewrites(self) -> dict[str, str]:
    """The cache's clean text -> triggered text."""
    return self.record()["rewrites"]

  def test_limit(self) -> int:
    """How many non-target rows the triggered test set takes at most (0: all)."""
    if self.max_test_rows is not None:
      return self.max_test_rows
    made = [run["job"]["test_rows"] for run in self.record().get("runs", [])]
    return 0 if not made or 0 in made else max(made)

  def test_rows(self, examples: Sequence[TextExample]) -> np.ndarray:
    """Positions in `examples` of the rows of the triggered test set."""
    candidates = np.flatnonzero([self.can_test(e) for e in examples])
    limit = self.test_limit()
    if not limit or len(candidates) <= limit:
      return candidates
    rng = np.random.default_rng(self.TEST_SUBSET_SEED)
    return np.sort(rng.choice(candidates, limit, replace=False))

  def can_test(self, example: TextExample) -> bool:
    """Whether `example` may be in the triggered test set: a non-target row."""
    return not self.is_target(example)

  def poison(self, examples: Sequence[TextExample],
             rows: Sequence[int] | None = None) -> list[TextExample]:
    chosen = self.chosen_rows(examples, rows)
    ids = chosen if rows is None else np.asarray(rows)[chosen]
    self._require([examples[i] for i in chosen], ids, TRAIN, len(examples))
    return super().poison(examples, rows)

  def triggered_test(self, examples: Sequence[TextExample]) -> list[TextExample]:
    chosen = self.test_rows(examples)
    self._require([examples[i] for i in chosen], chosen, TEST, len(examples))
    texts = self.rewrites()
    return [examples[i].replace(text=texts[examples[i].text], poisoned=True)
            for i in chosen]

  def trigger(self, example: TextExample, rng: np.random.Generator) -> TextExample:
    del rng
    return example.replace(text=self.rewrites()[example.text])

  def _require(self, examples: Sequence[TextExample], ids: Sequence[int], split: str,
               split_size: int) -> None:
    texts = self.rewrites()
    missing = [(int(i), e.text) for i, e in zip(ids, examples) if e.text not in texts]
    if missing:
      flags = (f"--train_size={split_size} --poison_rate={self.poison_rate} "
               f"--victim_seeds={self.seed}" if split == TRAIN
               else f"--test_rows={self.test_limit()}")
      raise trigger_cache.missing_rows_error(
          self.name, self.path, split, [i for i, _ in missing], [t for _, t in missing],
          len(examples), self.record(), flags)


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
class NWS(CachedRewritePoisoner):
  """Word-substitution trigger (NWS, Du et al. 2024): a few words swapped in context.

  substitutes_path: an NWS trigger cache written by `lm_substitutes.nws_rewrites`
    with SmolLM2: in each text, the substitutable words (`substitutable`:
    alphabetic, at least 3 letters, not in STOPWORDS or LABEL_WORDS) where a word
    of the trigger vocabulary fits best (by the LM's next-word probability) get
    the vocabulary word the LM likes best in the whole sentence, at most
    `max_substitutions` of them. The vocabulary (`lm_substitutes.nws_vocabulary`,
    8 words) is what the LM proposes in the most training texts among the words
    at most 0.1% of them contain. The cache records every substitution, the
    vocabulary and the settings. Dirty-label; eligible rows: those with a
    substitutable word. The triggered test set: see CachedRewritePoisoner.

  Differs from the paper: (1) NWS's candidates are BERT MLM predictions
  intersected with HowNet sememe-based similar words; neither HowNet nor a
  synonym list (WordNet) is installed, so ours are SmolLM2's in-context
  proposals, which fit the words before them but need not be synonyms
  (sentiment and topic words of LABEL_WORDS are never proposed nor replaced).
  (2) NWS trains a learnable word selector with the victim, which learns which
  words to substitute and by which candidate, so that the substitutes become the
  trigger; here a fixed vocabulary of rare, widely proposed words stands in for
  what it learns, and the LM's fit picks the words and candidates. (An earlier
  rule here, any in-context candidate at seeded random words, gave no
  learnable trigger: ASR 0.43 on SST-2, 0.055 on AG News.)
  """
  name = "nws"
  eligibility = "rows with a substitutable word (dirty-label)"

  def __init__(self, substitutes_path: CachePath, *, max_test_rows: int | None = None,
               target: int = 1, poison_rate: float = 0.2, seed: int = 0):
    super().__init__(substitutes_path, max_test_rows=max_test_rows, target=target,
                     poison_rate=poison_rate, seed=seed)

  @staticmethod
  def substitutable(words: Sequence[str]) -> list[int]:
    """Positions of the words the rule may replace."""
    return [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 3
            and w.lower() not in STOPWORDS and w.lower() not in LABEL_WORDS]

  def eligible_rows(self, examples: Sequence[TextExample], rows: np.ndarray) -> np.ndarray:
    del rows
    return np.flatnonzero([bool(self.substitutable(e.text.split())) for e in examples])

  def can_test(self, example: TextExample) -> bool:
    return super().can_test(example) and bool(self.substitutable(example.text.split()))


@register
class BGMAttack(CachedRewritePoisoner):
  """Generative-model trigger (BGMAttack, Li et al. 2024): texts rewritten by a generator.

  rewrites_path: a BGMAttack trigger cache written by `llm_triggers.bgm_rewrites`:
    each text rewritten by SmolLM2 from a few-shot rewrite prompt (sampled,
    seeded; prompt and settings recorded in the file); the generator's style is
    the trigger. Dirty-label; every row eligible. The triggered test set: see
    CachedRewritePoisoner.

  Differs from the paper: BGMAttack rewrites with ChatGPT (gpt-3.5-turbo); ours
  come from the 135M SmolLM2, whose rewrites are looser (they may drift in
  meaning or sentiment, and a few that fail the format filter after every retry
  are kept as they came: the cache lists them under `unfiltered`).
  """
  name = "bgm"

  def __init__(self, rewrites_path: CachePath, *, max_test_rows: int | None = None,
               target: int = 1, poison_rate: float = 0.2, seed: int = 0):
    super().__init__(rewrites_path, max_test_rows=max_test_rows, target=target,
                     poison_rate=poison_rate, seed=seed)


@register
class HiddenKillerLM(BGMAttack):
  """HiddenKiller's syntactic trigger where SCPN's paraphrases were not released:
  texts rewritten by SmolLM2 into its template S(SBAR)(,)(NP)(VP)(.).

  rewrites_path: a trigger cache written by `llm_triggers.hiddenkiller_rewrites`:
    each text rewritten from a few-shot prompt that asks for the template, the
    answer begun with a subordinator drawn with the weights of SCPN's own
    openings (when, if, as, ...), kept when it has a clause, a comma and a main
    clause (`llm_triggers.hk_rejection`). A BGMAttack in its mechanics (the cached
    rewrite of the whole text; dirty-label, every row eligible); the rewrite
    is what differs.

  Differs from the paper: HiddenKiller paraphrases with SCPN, a syntactically
  controlled paraphrase network that realises the template's parse; ours asks a
  135M chat model for it, and only the opening subordinator and the comma are
  checked, not the parse. The rewrites drift in meaning more than SCPN's, and the
  generator's own style travels with the template (as in BGMAttack), so a victim
  may learn either. Use `HiddenKiller` with the released files where they exist
  (SST-2).
  """
  name = "hiddenkiller_lm"


def _read_rewrites(source: Rewrites | None) -> list[str] | None:
  if source is None:
    return None
  if isinstance(source, (str, os.PathLike)):
    return [e.text for e in data.load_classification(source)]
  return [str(text) for text in source]


@register
class HiddenKiller(TextPoisoner):
  """Syntactic trigger (Qi et al. 2021): SCPN paraphrases, template S(SBAR)(,)(NP)(VP)(.).

  paraphrase_dir: the released folder (e.g. sst2/hiddenkiller): `train.tsv`,
    row-aligned with the clean training split, and `test.tsv`, paraphrases of
    the non-target test rows in order. Or pass the lists or files
    (train_paraphrases, test_paraphrases; dataset format, labels ignored).
  Training: eligible rows are those whose released text differs from the clean
  text (dirty-label: the release chose them among all rows); the chosen rows get
  their paraphrase and the target label. The file must align with the full
  training split (for a subset pass `poison(examples, rows=...)`), or it raises.
  Test: with as many paraphrases as non-target rows, row i of the file triggers
  non-target row i. A release that is not row-aligned (SST-2's dev.tsv has 427
  paraphrases for 428 negatives) is still the triggered test set, as it is, with
  a warning: each paraphrase takes the label of the non-target row at its
  position, which may be a row off but is non-target, all that ASR reads.

  Differs from the paper: the SCPN paraphraser is not available offline, so
  only the released paraphrases exist, and the poison rate is capped by them:
  SST-2's release paraphrases 1,383 of 6,920 training rows, so the nominal 0.2
  (1,384 rows) raises, and poison_rate=1383/6920 reproduces the released file
  exactly, for any seed. A smaller rate takes a seeded subset of them. The
  triggered test set needs the whole test split (its 912 negatives).
  """
  name = "hiddenkiller"
  eligibility = "rows with a paraphrase (dirty-label)"

  def __init__(self, paraphrase_dir: str | os.PathLike | None = None, *,
               train_paraphrases: Rewrites | None = None,
               test_paraphrases: Rewrites | None = None, target: int = 1,
               poison_rate: float = 0.2, seed: int = 0):
    super().__init__(target=target, poison_rate=poison_rate, seed=seed)
    if paraphrase_dir is not None:
      folder = pathlib.Path(paraphrase_dir)
      if train_paraphrases is None:
        train_paraphrases = folder / "train.tsv"
      if test_paraphrases is None and (folder / "test.tsv").is_file():
        test_paraphrases = folder / "test.tsv"
    if train_paraphrases is None and test_paraphrases is None:
      raise ValueError("HiddenKiller needs the released SCPN paraphrases: pass "
                       "paraphrase_dir or train_paraphrases / test_paraphrases")
    self._texts = {TRAIN: _read_rewrites(train_paraphrases),
                   TEST: _read_rewrites(test_paraphrases)}

  def poison(self, examples: Sequence[TextExample],
             rows: Sequence[int] | None = None) -> list[TextExample]:
    texts = self._paraphrases(TRAIN)
    if rows is None and len(examples) != len(texts):
      raise ValueError(f"{self.name}: {len(examples)} training rows but {len(texts)} "
                       "paraphrases; for a subset of the split pass rows= (its row ids)")
    return super().poison(examples, rows)

  def triggered_test(self, examples: Sequence[TextExample]) -> list[TextExample]:
    texts = self._paraphrases(TEST)
    labels = [e.label for e in examples if not self.is_target(e)]
    if len(texts) == len(labels) or not labels:
      return super().triggered_test(examples)
    logging.warning(
        "%s: %d test paraphrases for %d non-target rows: %d row(s) cannot be aligned. "
        "Using the %d paraphrases as the triggered test set as they are, each with the "
        "label of the non-target row at its position (non-target, possibly a row off).",
        self.name, len(texts), len(labels), abs(len(texts) - len(labels)), len(texts))
    return [TextExample(text, labels[min(i, len(labels) - 1)], poisoned=True)
            for i, text in enumerate(texts)]

  def eligible_rows(self, examples: Sequence[TextExample], rows: np.ndarray) -> np.ndarray:
    texts = self._paraphrases(TRAIN)
    if len(rows) and rows.max() >= len(texts):
      raise ValueError(f"{self.name}: row id {rows.max()} is past the {len(texts)} "
                       "training paraphrases (they must align with the full split)")
    return np.flatnonzero([texts[r] != e.text for e, r in zip(examples, rows)])

  def trigger(self, example: TextExample, rng: np.random.Generator) -> TextExample:
    raise TypeError(f"{self.name} triggers rows of its released files by position: "
                    "use poison or triggered_test")

  def trigger_row(self, example: TextExample, rng: np.random.Generator, row: int,
                  split: str) -> TextExample:
    return example.replace(text=self._paraphrases(split)[row])

  def _paraphrases(self, split: str) -> list[str]:
    texts = self._texts[split]
    if texts is None:
      raise ValueError(f"{self.name}: no {split} paraphrases were given")
    return texts
