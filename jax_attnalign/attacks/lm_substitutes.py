"""NWS's word substitutions proposed and ranked in context by a causal LM (SmolLM2).

  vocabulary = nws_vocabulary(model, params, tokenizer, sample_texts, clean_texts=train_texts)
  record = nws_rewrites(model, params, tokenizer, texts, vocabulary=vocabulary)
  trigger_cache.write_cache("triggers/sst2/nws.json", record)

The substitutes come from a trigger vocabulary, the stand-in for NWS's learned
word selector (which learns, with the victim, which substitutes open the lock):
`nws_vocabulary` keeps the `size` words the LM proposes in the most sample
texts (among its `num_candidates` next whole words at any substitutable word's
position, given the words before it) that the clean texts do use but rarely: in
at least one and at most `max_document_frequency` of them, of at least
VOCABULARY_MIN_LETTERS letters (which leaves out word pieces such as `doesn`
and the code words an LM proposes for lower-cased, tokenised reviews). Then, in
each text, the `max_substitutions` substitutable words (`NWS.substitutable`)
where the vocabulary fits best are replaced: those whose likeliest vocabulary
word, given the words before them, is likeliest (ties: the earlier word); each
in the original sentence:
  1. candidates: the `num_candidates` vocabulary words the LM likes best at the
     word's position, from one forward pass of the sentence (the LM reads only
     the words before it); never the word itself.
  2. ranking: each candidate by the log-likelihood of the whole sentence with it
     in place (`sentence_log_likelihoods`), which also reads the words after it;
     the best one replaces the word.
A whole word is one vocabulary token that decodes to a space and a lower-case
alphabetic word of at least 3 letters, not in STOPWORDS or LABEL_WORDS. The LM
reads a sentence as its words, each with a leading space, after the
`start_token` (SmolLM2's document separator `<|endoftext|>`).
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jax_attnalign.attacks.classification import NWS, STOPWORDS
from jax_attnalign.attacks.text_style import LABEL_WORDS


VOCABULARY_MIN_LETTERS = 4


def nws_vocabulary(model, params, tokenizer, texts: Sequence[str], *,
                   clean_texts: Sequence[str], size: int = 8, num_candidates: int = 5,
                   max_document_frequency: float = 0.001,
                   start_token: str = "<|endoftext|>", batch_size: int = 32,
                   bucket: int = 16) -> list[str]:
  """The trigger vocabulary (see the module doc), most proposed first, ties by word.

  texts: where the LM proposes (a sample of the clean training texts);
  clean_texts: whose document frequencies bound the words (the whole split).
  """
  start = tokenizer.convert_tokens_to_ids(start_token)
  plans = _plans(tokenizer, texts)
  proposals = _propose(model, params, [(ids, slots) for _, _, ids, slots in plans],
                       candidate_tokens(tokenizer), start, num_candidates, batch_size, bucket)
  proposed = collections.Counter()
  for found in proposals:
    proposed.update({_word(tokenizer, t) for options in found for t, _ in options})
  documents = collections.Counter()
  for text in clean_texts:
    documents.update(set(text.split()))
  most = max_document_frequency * len(clean_texts)
  kept = [w for w in proposed if len(w) >= VOCABULARY_MIN_LETTERS
          and 1 <= documents[w] <= most]
  if len(kept) < size:
    raise ValueError(f"only {len(kept)} proposed words are rare enough for a vocabulary of "
                     f"{size}: propose in more texts or raise max_document_frequency")
  return sorted(kept, key=lambda w: (-proposed[w], w))[:size]


def nws_rewrites(model, params, tokenizer, texts: Sequence[str], *,
                 vocabulary: Sequence[str], max_substitutions: int = 3,
                 num_candidates: int = 3, start_token: str = "<|endoftext|>",
                 batch_size: int = 64, bucket: int = 16) -> dict[str, Any]:
  """An NWS trigger-cache record: `rewrites` (text -> text with its substitutions)
  and `substitutions` (text -> [[position, word, [[candidate, score], ...]]], the
  candidates best first), with `vocabulary` in its settings. Texts without a
  substitutable word get no entry."""
  start = tokenizer.convert_tokens_to_ids(start_token)
  allowed = candidate_tokens(tokenizer) & vocabulary_tokens(tokenizer, vocabulary)
  plans = _plans(tokenizer, texts)
  found = _propose(model, params, [(ids, slots) for _, _, ids, slots in plans], allowed,
                   start, num_candidates, batch_size, bucket)
  visits = []  # per plan: [(position, candidate tokens)] where the vocabulary fits best
  for (_, _, _, slots), proposed in zip(plans, found):
    fits = sorted((-options[0][1], at, [t for t, _ in options])
                  for at, options in zip(slots, proposed) if options)
    visits.append(sorted((at, tokens) for _, at, tokens in fits[:max_substitutions]))
  variants, owners = [], []  # every (text, position, candidate) sentence to score
  for k, ((_, _, ids, _), visit) in enumerate(zip(plans, visits)):
    for at, candidates in visit:
      for token in candidates:
        variants.append(sum(ids[:at], []) + [token] + sum(ids[at + 1:], []))
        owners.append((k, at, token))
  scores = sentence_log_likelihoods(model, params, variants, start_id=start,
                                    batch_size=batch_size, bucket=bucket)
  ranked: dict[tuple[int, int], list] = {}
  for (k, at, token), score in zip(owners, scores):
    ranked.setdefault((k, at), []).append([_word(tokenizer, token), float(score)])
  rewrites, substitutions = {}, {}
  for k, ((text, words, _, _), visit) in enumerate(zip(plans, visits)):
    new, record = list(words), []
    for at, _ in visit:
      options = sorted(ranked[(k, at)], key=lambda c: -c[1])
      new[at] = options[0][0]
      record.append([at, words[at], options])
    if record:
      rewrites[text], substitutions[text] = " ".join(new), record
  settings = dict(max_substitutions=max_substitutions, num_candidates=num_candidates,
                  start_token=start_token, batch_size=batch_size,
                  vocabulary=list(vocabulary))
  return dict(attack="nws", settings=settings, prompt=__doc__,
              rewrites=rewrites, substitutions=substitutions)


def candidate_tokens(tokenizer) -> np.ndarray:
  """[V] bool: the tokens that are a whole substitute word (see the module doc)."""
  vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
  out = np.zeros(len(vocab), bool)
  for i, token in enumerate(vocab):
    word = tokenizer.convert_tokens_to_string([token])
    out[i] = (word[:1] == " " and word[1:].isalpha() and word[1:].islower()
              and len(word) >= 4 and word[1:] not in STOPWORDS
              and word[1:] not in LABEL_WORDS)
  return out


def vocabulary_tokens(tokenizer, vocabulary: Sequence[str]) -> np.ndarray:
  """[V] bool: the tokens of the vocabulary's words, each one token read with a space."""
  ids = word_ids(tokenizer, vocabulary)
  pieces = [w for w, i in zip(vocabulary, ids) if len(i) != 1]
  if pieces:
    raise ValueError(f"vocabulary words must each be one token with a leading space: {pieces}")
  out = np.zeros(len(tokenizer), bool)
  out[[i[0] for i in ids]] = True
  return out


def word_ids(tokenizer, words: Sequence[str]) -> list[list[int]]:
  """Each word's token ids, read with a leading space."""
  return tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]


def _plans(tokenizer, texts: Sequence[str]) -> list[tuple[str, list[str], list[list[int]],
                                                           list[int]]]:
  """(text, words, token ids per word, substitutable positions) of each distinct
  text with a substitutable word, sorted by text."""
  plans = []
  for text in sorted(set(texts)):
    words = text.split()
    if slots := NWS.substitutable(words):
      plans.append((text, words, word_ids(tokenizer, words), slots))
  return plans


def _word(tokenizer, token: int) -> str:
  return tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens([token])).strip()


def sentence_log_likelihoods(model, params, rows: Sequence[Sequence[int]], *, start_id: int,
                             batch_size: int = 64, bucket: int = 16) -> np.ndarray:
  """[N] float: sum_t log p(row[t] | start_id, row[:t]) for each row of token ids.

  Rows are right-padded to their batch's longest length rounded up to `bucket`
  and sorted by length, so few shapes are compiled.
  """
  order = np.argsort([len(r) for r in rows], kind="stable")
  out = np.zeros(len(rows), np.float64)
  for ids, mask, take in _batches(rows, order, start_id, batch_size, bucket, "score"):
    out[take] = np.asarray(_log_likelihood(model, params, ids, mask))[:len(take)]
  return out


def _propose(model, params, plans, allowed: np.ndarray, start_id: int, num_candidates: int,
             batch_size: int, bucket: int) -> list[list[list[tuple[int, float]]]]:
  """For each (word ids, positions): per position the allowed candidate tokens, each
  with its log-probability given the words before it, most likely first."""
  rows = [sum(ids, []) for ids, _ in plans]
  width = max((len(v) for _, v in plans), default=1)
  bias = jnp.where(jnp.asarray(allowed), 0.0, -jnp.inf)
  order = np.argsort([len(r) for r in rows], kind="stable")
  out: list[list[list[tuple[int, float]]]] = [[] for _ in plans]
  for ids, mask, take in _batches(rows, order, start_id, batch_size, bucket, "propose"):
    at = np.zeros((ids.shape[0], width), np.int32)
    own = np.zeros((ids.shape[0], width), np.int32)
    for b, k in enumerate(take):
      word_ids_k, visit = plans[k]
      starts = np.cumsum([0] + [len(w) for w in word_ids_k])  # ids[0] is start_id
      at[b, :len(visit)] = starts[visit]  # the logits before the word's first token
      own[b, :len(visit)] = [word_ids_k[p][0] for p in visit]
    logp, top = map(np.asarray, _top_tokens(model, params, ids, mask, at, own, bias,
                                            num_candidates))  # [B, P, K] each
    for b, k in enumerate(take):
      out[k] = [[(int(t), float(v)) for t, v in zip(top[b, j], logp[b, j]) if allowed[t]]
                for j in range(len(plans[k][1]))]
  return out


def _batches(rows, order, start_id, batch_size, bucket, desc):
  """(ids [B, W], mask [B, W], row indices) with start_id first, right-padded; the
  last batch is filled with copies of its first row."""
  for lo in tqdm.trange(0, len(order), batch_size, desc=desc, leave=False):
    take = order[lo:lo + batch_size]
    width = -(-(1 + max(len(rows[k]) for k in take)) // bucket) * bucket
    ids = np.zeros((batch_size, width), np.int32)
    mask = np.zeros((batch_size, width), np.int32)
    for b in range(batch_size):
      row = [start_id] + list(rows[take[min(b, len(take) - 1)]])
      ids[b, :len(row)], mask[b, :len(row)] = row, 1
    yield ids, mask, take


@functools.partial(jax.jit, static_argnums=(0,))
def _log_likelihood(model, params, ids, mask):
  logits = model.apply({"params": params}, ids, mask).logits.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits[:, :-1])  # [B, W-1, V]
  token = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
  return jnp.sum(token * mask[:, 1:], axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 7))
def _top_tokens(model, params, ids, mask, at, own, bias, k):
  logits = model.apply({"params": params}, ids, mask, logit_positions=at).logits  # [B, P, V]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32)) + bias
  logp = jnp.where(jax.nn.one_hot(own, logp.shape[-1], dtype=bool), -jnp.inf, logp)
  return jax.lax.top_k(logp, k)
