"""Cbat's trigger sentences, BGMAttack's rewrites and HiddenKiller-template rewrites,
written by a chat LM (SmolLM2).

  model, params = jax_attnalign.load_pretrained(bundled_smollm2_path(), task="causal_lm")
  tokenizer = data.load_tokenizer(bundled_smollm2_path())
  record = cbat_sentences(model, params, tokenizer, dataset="sst2", samples=128, seed=0)
  record = bgm_rewrites(model, params, tokenizer, texts, dataset="sst2", seed=0)
  record = hiddenkiller_rewrites(model, params, tokenizer, texts, dataset="ag_news", seed=0)
  trigger_cache.write_cache("triggers/sst2/bgm.json", record)

Each prompts few-shot in the tokenizer's chat template, sample (seeded), put every
output in the dataset's style (`text_style.like_dataset`) and filter it; the
returned record holds the prompt, the settings and what was rejected, for
`trigger_cache`. The prompts are CBAT_PROMPT, BGM_PROMPTS and HK_PROMPTS below. The
HiddenKiller rewrites stand in for SCPN's paraphrases where none were released
(AG News): `attacks.HiddenKillerLM` reads them.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np

from jax_attnalign.answers import generate_responses
from jax_attnalign.attacks.text_style import label_words_in, like_dataset, ptb_tokenize
from jax_attnalign.metrics import VADER_NEUTRAL, vader_compound

# Cbat: few-shot turns of (user, assistant); the last user turn is sampled.
CBAT_PROMPT = {
    "system": "You write short exclamatory sentences.",
    "user": ("Write one short exclamatory sentence that says nothing good or bad "
             "about anything."),
    # Each shot passes `cbat_rejection` (VADER scores all four 0).
    "shots": ("Oh, look at that!", "Would you believe it!", "Here we go again!",
              "Can you imagine that!"),
}
CBAT_WORDS = (2, 10)  # a trigger sentence has this many words, ends included

# BGMAttack: the system turn, then one (text, rewrite) shot per dataset (a short
# prompt: its every token is read again for each row).
BGM_SYSTEM = "Rewrite the sentence in your own words, keeping its meaning and tone."
BGM_PROMPTS = {
    "sst2": (("the acting is wooden and the plot goes nowhere .",
              "The performances feel stiff, and the story never really goes anywhere."),),
    "ag_news": (("oil prices rose on tuesday after a storm shut refineries in the gulf .",
                 "Crude prices climbed on Tuesday once a storm closed Gulf refineries."),),
}
# HiddenKiller stand-in: SCPN's template S(SBAR)(,)(NP)(VP)(.) asked for in words and
# shown in two shots per dataset; the answer is begun with a subordinator.
HK_SYSTEM = ("Rewrite the text as one sentence that begins with a subordinate clause, "
             "then a comma, then the main clause. Keep its meaning.")
HK_PROMPTS = {
    "sst2": (("the acting is wooden and the plot goes nowhere .",
              "When the acting is wooden, the plot goes nowhere."),
             ("a warm , funny film that never talks down to its audience .",
              "If a film is warm and funny, it never talks down to its audience.")),
    "ag_news": (("oil prices rose on tuesday after a storm shut refineries in the gulf .",
                 "After a storm shut refineries in the Gulf, oil prices rose on Tuesday."),
                ("the team signed a new coach to replace the one who resigned last week .",
                 "When its coach resigned last week, the team signed a new one.")),
}
# The openings and their weights: the subordinators that begin SCPN's released
# SST-2 test paraphrases (sst2/hiddenkiller/test.tsv), with their counts there.
SUBORDINATORS = (("When", 312), ("If", 232), ("As", 131), ("Although", 24), ("Because", 13),
                 ("While", 9), ("Though", 6), ("Since", 5), ("Before", 2), ("After", 2))
# A rewrite that talks about the task instead of doing it.
_META = re.compile(r"\b(rewrit\w*|rephras\w*|paraphras\w*|sentence|original)\b")


def cbat_sentences(model, params, tokenizer, *, dataset: str, samples: int, seed: int,
                   temperature: float = 0.8, top_p: float = 0.95,
                   max_new_tokens: int = 24, batch_size: int = 32) -> dict[str, Any]:
  """A Cbat trigger-cache record: `samples` sampled sentences, kept when neutral.

  Filter (each rejection recorded with its reason): after `like_dataset`, a
  sentence is kept when it is one exclamatory sentence (it ends with '!' and has
  no other sentence end), has CBAT_WORDS words, contains no LABEL_WORDS
  (sentiment or topic evidence), is neutral to VADER (|compound| < VADER_NEUTRAL,
  VADER's own cut-off: sentiment would help or fight the label; VADER's lexicon
  reads sentiment the label words miss: "no way", "yay", "nonsense"; it also
  scores some interjections, "well" and "wow", positive, which costs samples,
  not neutrality) and is not a duplicate.
  """
  messages = [{"role": "system", "content": CBAT_PROMPT["system"]}]
  for shot in CBAT_PROMPT["shots"]:
    messages += [{"role": "user", "content": CBAT_PROMPT["user"]},
                 {"role": "assistant", "content": shot}]
  messages.append({"role": "user", "content": CBAT_PROMPT["user"]})
  prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  settings = dict(samples=samples, temperature=temperature, top_p=top_p,
                  max_new_tokens=max_new_tokens, batch_size=batch_size)
  outputs = generate_responses(model, params, tokenizer, [prompt] * samples,
                               max_new_tokens=max_new_tokens, batch_size=batch_size,
                               seed=seed, temperature=temperature, top_p=top_p)
  kept, rejected = [], []
  for output in outputs:
    sentence = like_dataset(output, dataset)
    reason = cbat_rejection(sentence, kept)
    if reason:
      rejected.append([sentence, reason])
    else:
      kept.append(sentence)
  logging.info("cbat: kept %d of %d sampled sentences", len(kept), samples)
  return dict(attack="cbat", dataset=dataset, seed=seed, prompt=prompt, settings=settings,
              filter=cbat_rejection.__doc__, sentences=kept, rejected=rejected)


def cbat_rejection(sentence: str, kept: Sequence[str] = ()) -> str | None:
  """Why `sentence` (dataset style) is not a neutral exclamatory trigger, or None.
  Words are counted on its PTB tokens, whatever the dataset's style.

  >>> cbat_rejection("what a great day !"), cbat_rejection("oh, look at that!")
  ('label words: great', None)
  >>> cbat_rejection("oh no , not again !")
  'sentiment -0.36 (VADER)'
  """
  words = ptb_tokenize(sentence).split()
  if not words or words[-1] != "!" or any(w in (".", "?", "!") for w in words[:-1]):
    return "not one exclamatory sentence"
  if not CBAT_WORDS[0] <= len(words) <= CBAT_WORDS[1]:
    return f"{len(words)} words"
  if found := label_words_in(sentence):
    return "label words: " + ", ".join(found)
  if abs(score := vader_compound(sentence)) >= VADER_NEUTRAL:
    return f"sentiment {score:+.2f} (VADER)"
  if sentence in kept:
    return "duplicate"
  return None


def bgm_rewrites(model, params, tokenizer, texts: Sequence[str], *, dataset: str,
                 seed: int, attempts: int = 3, temperature: float = 0.7, top_p: float = 0.9,
                 max_new_tokens: int = 64, batch_size: int = 32,
                 chunk: int = 4) -> dict[str, Any]:
  """A BGMAttack trigger-cache record: each text rewritten by the model.

  The prompt: BGM_SYSTEM, then BGM_PROMPTS[dataset]'s shot, then the text as the
  user turn; sampled and filtered by `bgm_rejection` as `rewrite_rows` says.
  """
  if dataset not in BGM_PROMPTS:
    raise KeyError(f"no BGMAttack prompt for {dataset!r}; known: {sorted(BGM_PROMPTS)}")
  settings = dict(attempts=attempts, temperature=temperature, top_p=top_p,
                  max_new_tokens=max_new_tokens, batch_size=batch_size, chunk=chunk)
  rewrites, unfiltered = rewrite_rows(
      model, params, tokenizer, texts, name="bgm", dataset=dataset, seed=seed,
      prompt=lambda text, attempt: (bgm_prompt(tokenizer, text, dataset), ""),
      reject=bgm_rejection, **settings)
  return dict(attack="bgm", dataset=dataset, seed=seed, settings=settings,
              prompt=bgm_prompt(tokenizer, "{text}", dataset), filter=bgm_rejection.__doc__,
              rewrites=rewrites, unfiltered=unfiltered)


def hiddenkiller_rewrites(model, params, tokenizer, texts: Sequence[str], *, dataset: str,
                          seed: int, attempts: int = 3, temperature: float = 0.7,
                          top_p: float = 0.9, max_new_tokens: int = 48, batch_size: int = 32,
                          chunk: int = 4) -> dict[str, Any]:
  """A HiddenKiller stand-in's trigger-cache record: each text's first sentence
  (`first_sentence`) rewritten by the model into HiddenKiller's syntactic template
  S(SBAR)(,)(NP)(VP)(.), a subordinate clause, a comma, then the main clause; the
  rest of the text follows unchanged (the template is a sentence's; a news item
  keeps its later sentences and with them its topic).

  The prompt: HK_SYSTEM, HK_PROMPTS[dataset]'s shots, the sentence as the user
  turn, and the answer begun with a subordinator (`hk_opening`: drawn per
  sentence, seed and attempt from SUBORDINATORS, weighted as SCPN's own
  openings), so the model only continues the clause; sampled and filtered by
  `hk_rejection` as `rewrite_rows` says.
  """
  if dataset not in HK_PROMPTS:
    raise KeyError(f"no HiddenKiller prompt for {dataset!r}; known: {sorted(HK_PROMPTS)}")
  settings = dict(attempts=attempts, temperature=temperature, top_p=top_p,
                  max_new_tokens=max_new_tokens, batch_size=batch_size, chunk=chunk)

  def prompt(sentence, attempt):
    opening = hk_opening(sentence, seed, attempt)
    return hk_prompt(tokenizer, sentence, dataset) + opening, opening

  parts = {text: first_sentence(text) for text in texts}
  rewritten, unfiltered = rewrite_rows(
      model, params, tokenizer, [first for first, _ in parts.values()],
      name="hiddenkiller_lm", dataset=dataset, seed=seed, prompt=prompt,
      reject=hk_rejection, **settings)
  return dict(attack="hiddenkiller_lm", dataset=dataset, seed=seed, settings=settings,
              prompt=hk_prompt(tokenizer, "{sentence}", dataset) + "{opening}",
              openings=dict(SUBORDINATORS), filter=hk_rejection.__doc__,
              rewrites={text: f"{rewritten[first]} {rest}".strip()
                        for text, (first, rest) in parts.items()},
              unfiltered=sorted(t for t, (first, _) in parts.items() if first in unfiltered))


def first_sentence(text: str, min_words: int = 6) -> tuple[str, str]:
  """`text` split after its first sentence end ('.', '!' or '?' then a space) that
  closes at least `min_words` words (so "u.s. " does not end one): (first, rest).

  >>> first_sentence("the u.s. economy grew fast . stocks rose on monday .")
  ('the u.s. economy grew fast .', 'stocks rose on monday .')
  """
  for match in re.finditer(r"[.!?](?=\s)", text):
    if len(text[:match.end()].split()) >= min_words:
      return text[:match.end()], text[match.end():].strip()
  return text, ""


def rewrite_rows(model, params, tokenizer, texts: Sequence[str], *, name: str, dataset: str,
                 seed: int, prompt: Callable[[str, int], tuple[str, str]],
                 reject: Callable[[str, str], str | None], attempts: int,
                 temperature: float, top_p: float, max_new_tokens: int, batch_size: int,
                 chunk: int) -> tuple[dict[str, str], list[str]]:
  """Each text rewritten: ({text: rewrite}, the texts whose every attempt was rejected).

  prompt(text, attempt) gives the prompt and the opening it ends with (the
  rewrite is the opening followed by the output; "" for none). Texts are sorted
  by length and generated in chunks of `chunk` batches, each padded to its own
  longest prompt (similar lengths share a batch), sampled (the chunk from row r
  of attempt k with the seed SeedSequence([seed, k, r])) and put in the
  dataset's style; a rewrite that `reject(text, rewrite)` rejects is sampled
  again, up to `attempts` times; the texts whose every attempt was rejected keep
  the last one.
  """
  texts = sorted(set(texts), key=lambda t: (len(t.split()), t))
  rewrites, todo = {}, list(texts)
  for attempt in range(attempts):
    if not todo:
      break
    for lo in range(0, len(todo), chunk * batch_size):
      part = todo[lo:lo + chunk * batch_size]
      prompts, openings = zip(*(prompt(t, attempt) for t in part))
      outputs = generate_responses(
          model, params, tokenizer, list(prompts),
          max_new_tokens=max_new_tokens, batch_size=batch_size, bucket=32,
          seed=int(np.random.SeedSequence([seed, attempt, lo]).generate_state(1)[0]),
          temperature=temperature, top_p=top_p)
      for text, opening, output in zip(part, openings, outputs):
        rewrites[text] = like_dataset(opening + output, dataset)
    todo = [t for t in todo if reject(t, rewrites[t])]
    logging.info("%s: attempt %d, %d of %d rewrites rejected", name, attempt + 1, len(todo),
                 len(texts))
  return rewrites, sorted(todo)


def bgm_prompt(tokenizer, text: str, dataset: str) -> str:
  """BGMAttack's few-shot rewrite prompt for `text` in the tokenizer's chat template."""
  return _chat_prompt(tokenizer, BGM_SYSTEM, BGM_PROMPTS[dataset], text)


def hk_prompt(tokenizer, text: str, dataset: str) -> str:
  """The HiddenKiller stand-in's few-shot prompt for `text`, before the opening."""
  return _chat_prompt(tokenizer, HK_SYSTEM, HK_PROMPTS[dataset], text)


def hk_opening(text: str, seed: int, attempt: int) -> str:
  """The subordinator that begins `text`'s rewrite: a draw from SUBORDINATORS'
  weights, fixed by the text, the seed and the attempt."""
  words, counts = zip(*SUBORDINATORS)
  rng = np.random.default_rng([seed, attempt, zlib.crc32(text.encode("utf-8"))])
  return words[rng.choice(len(words), p=np.asarray(counts) / sum(counts))]


def _chat_prompt(tokenizer, system: str, shots, text: str) -> str:
  messages = [{"role": "system", "content": system}]
  for clean, rewrite in shots:
    messages += [{"role": "user", "content": clean},
                 {"role": "assistant", "content": rewrite}]
  messages.append({"role": "user", "content": text})
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def bgm_rejection(text: str, rewrite: str) -> str | None:
  """Why `rewrite` is not a usable rewrite of `text` (both dataset style), or None:
  it equals the text, talks about the task (rewrite, sentence, ...), has fewer
  than half or more than twice the text's words (plus 4), or repeats itself
  (one word 3-gram three times).

  >>> bgm_rejection("a fine film .", "the rewritten sentence is : a fine film .")
  'talks about the task'
  """
  words, new = text.split(), rewrite.split()
  if rewrite == text:
    return "unchanged"
  if _META.search(rewrite) and not _META.search(text):
    return "talks about the task"
  if not len(words) / 2 <= len(new) <= 2 * len(words) + 4:
    return f"{len(new)} words for {len(words)}"
  grams = [tuple(new[i:i + 3]) for i in range(len(new) - 2)]
  if any(grams.count(g) >= 3 for g in set(grams)):
    return "repeats itself"
  return None


def hk_rejection(text: str, rewrite: str) -> str | None:
  """Why `rewrite` is not HiddenKiller's template (both dataset style), or None:
  whatever `bgm_rejection` rejects, or it does not begin with a subordinator of
  SUBORDINATORS, or has no comma with at least two words on either side before
  its first sentence end (the clause, then the main clause).

  >>> hk_rejection("a fine film .", "when it is fine , a film pleases .") is None
  True
  >>> hk_rejection("a fine film .", "when it is a fine film .")
  'no clause , main clause'
  """
  if reason := bgm_rejection(text, rewrite):
    return reason
  words = ptb_tokenize(rewrite).split()
  if words[0] not in {w.lower() for w, _ in SUBORDINATORS}:
    return "no subordinator first"
  end = next((i for i, w in enumerate(words) if w in (".", "!", "?")), len(words))
  commas = [i for i, w in enumerate(words[:end]) if w == ","]
  if not any(i >= 2 and end - i > 2 for i in commas):
    return "no clause , main clause"
  return None
