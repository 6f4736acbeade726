"""Cbat's trigger sentences and BGMAttack's rewrites, written by a chat LM (SmolLM2).

  model, params = jax_attnalign.load_pretrained(bundled_smollm2_path(), task="causal_lm")
  tokenizer = data.load_tokenizer(bundled_smollm2_path())
  record = cbat_sentences(model, params, tokenizer, dataset="sst2", samples=128, seed=0)
  record = bgm_rewrites(model, params, tokenizer, texts, dataset="sst2", seed=0)
  trigger_cache.write_cache("triggers/sst2/bgm.json", record)

Both prompt few-shot in the tokenizer's chat template, sample (seeded), put every
output in the dataset's style (`text_style.like_dataset`) and filter it; the
returned record holds the prompt, the settings and what was rejected, for
`trigger_cache`. The prompts are CBAT_PROMPT and BGM_PROMPTS below.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

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
  user turn. Texts are sorted by length and generated in chunks of `chunk`
  batches, each padded to its own longest prompt (similar lengths share a
  batch), sampled (the chunk from row r of attempt k with the seed
  SeedSequence([seed, k, r])); a rewrite that `bgm_rejection` rejects is sampled
  again, up to `attempts` times; the texts whose every attempt was rejected keep
  the last one and are listed under `unfiltered`.
  """
  if dataset not in BGM_PROMPTS:
    raise KeyError(f"no BGMAttack prompt for {dataset!r}; known: {sorted(BGM_PROMPTS)}")
  texts = sorted(set(texts), key=lambda t: (len(t.split()), t))
  settings = dict(attempts=attempts, temperature=temperature, top_p=top_p,
                  max_new_tokens=max_new_tokens, batch_size=batch_size, chunk=chunk)
  rewrites, todo = {}, list(texts)
  for attempt in range(attempts):
    if not todo:
      break
    for lo in range(0, len(todo), chunk * batch_size):
      part = todo[lo:lo + chunk * batch_size]
      outputs = generate_responses(
          model, params, tokenizer, [bgm_prompt(tokenizer, t, dataset) for t in part],
          max_new_tokens=max_new_tokens, batch_size=batch_size, bucket=32,
          seed=int(np.random.SeedSequence([seed, attempt, lo]).generate_state(1)[0]),
          temperature=temperature, top_p=top_p)
      for text, output in zip(part, outputs):
        rewrites[text] = like_dataset(output, dataset)
    todo = [t for t in todo if bgm_rejection(t, rewrites[t])]
    logging.info("bgm: attempt %d, %d of %d rewrites rejected", attempt + 1, len(todo),
                 len(texts))
  return dict(attack="bgm", dataset=dataset, seed=seed, settings=settings,
              prompt=bgm_prompt(tokenizer, "{text}", dataset), filter=bgm_rejection.__doc__,
              rewrites=rewrites, unfiltered=sorted(todo))


def bgm_prompt(tokenizer, text: str, dataset: str) -> str:
  """The few-shot rewrite prompt for `text` in the tokenizer's chat template."""
  messages = [{"role": "system", "content": BGM_SYSTEM}]
  for clean, rewrite in BGM_PROMPTS[dataset]:
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
