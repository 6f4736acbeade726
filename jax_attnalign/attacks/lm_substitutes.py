"""NWS's word substitutions proposed and ranked in context by a causal LM (SmolLM2).

  record = nws_rewrites(model, params, tokenizer, texts, seed=0)
  trigger_cache.write_cache("triggers/sst2/nws.json", record)

For each text, the substitutable words (`NWS.substitutable`) are visited in an
order drawn from default_rng([seed, crc32(text)]) (so a text's substitutions do
not depend on which other texts share the run); the first `max_substitutions`
are replaced, each in the original sentence:
  1. candidates: the `num_candidates` most likely next whole words at the word's
     position, from one forward pass of the sentence (the LM reads only the words
     before it). A whole word is one vocabulary token that decodes to a space and
     a lower-case alphabetic word of at least 3 letters, not in STOPWORDS or
     LABEL_WORDS, and not the word itself.
  2. ranking: each candidate by the log-likelihood of the whole sentence with it
     in place (`sentence_log_likelihoods`), which also reads the words after it;
     the best one replaces the word.
The LM reads a sentence as its words, each with a leading space, after the
`start_token` (SmolLM2's document separator `<|endoftext|>`).
"""

from __future__ import annotations

import functools
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jax_attnalign.attacks.classification import NWS, STOPWORDS
from jax_attnalign.attacks.text_style import LABEL_WORDS


def nws_rewrites(model, params, tokenizer, texts: Sequence[str], *, seed: int,
                 max_substitutions: int = 3, num_candidates: int = 5,
                 start_token: str = "<|endoftext|>", batch_size: int = 64,
                 bucket: int = 16) -> dict[str, Any]:
  """An NWS trigger-cache record: `rewrites` (text -> text with its substitutions)
  and `substitutions` (text -> [[position, word, [[candidate, score], ...]]], the
  candidates best first). Texts without a substitutable word get no entry."""
  start = tokenizer.convert_tokens_to_ids(start_token)
  allowed = candidate_tokens(tokenizer)
  plans = []  # (text, words, token ids per word, visited positions)
  for text in sorted(set(texts)):
    words = text.split()
    slots = NWS.substitutable(words)
    if slots:
      order = np.random.default_rng([seed, zlib.crc32(text.encode())]).permutation(slots)
      plans.append((text, words, word_ids(tokenizer, words),
                    [int(p) for p in order[:max_substitutions]]))
  proposals = _propose(model, params, [(ids, visit) for _, _, ids, visit in plans],
                       allowed, start, num_candidates, batch_size, bucket)
  variants, owners = [], []  # every (text, position, candidate) sentence to score
  for k, ((_, _, ids, visit), found) in enumerate(zip(plans, proposals)):
    for at, candidates in zip(visit, found):
      for token in candidates:
        variants.append(sum(ids[:at], []) + [token] + sum(ids[at + 1:], []))
        owners.append((k, at, token))
  scores = sentence_log_likelihoods(model, params, variants, start_id=start,
                                    batch_size=batch_size, bucket=bucket)
  ranked: dict[tuple[int, int], list] = {}
  for (k, at, token), score in zip(owners, scores):
    ranked.setdefault((k, at), []).append([_word(tokenizer, token), float(score)])
  rewrites, substitutions = {}, {}
  for k, (text, words, _, visit) in enumerate(plans):
    new, record = list(words), []
    for at in visit:
      options = sorted(ranked.get((k, at), []), key=lambda c: -c[1])
      if options:
        new[at] = options[0][0]
        record.append([at, words[at], options])
    if record:
      rewrites[text], substitutions[text] = " ".join(new), record
  settings = dict(max_substitutions=max_substitutions, num_candidates=num_candidates,
                  start_token=start_token, batch_size=batch_size)
  return dict(attack="nws", seed=seed, settings=settings, prompt=__doc__,
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


def word_ids(tokenizer, words: Sequence[str]) -> list[list[int]]:
  """Each word's token ids, read with a leading space."""
  return tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]


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


def _propose(model, params, plans, allowed: np.ndarray, start_id: int,
             num_candidates: int, batch_size: int, bucket: int) -> list[list[list[int]]]:
  """For each (word ids, visited positions): per position the candidate tokens."""
  rows = [sum(ids, []) for ids, _ in plans]
  width = max((len(v) for _, v in plans), default=1)
  bias = jnp.where(jnp.asarray(allowed), 0.0, -jnp.inf)
  order = np.argsort([len(r) for r in rows], kind="stable")
  out: list[list[list[int]]] = [[] for _ in plans]
  for ids, mask, take in _batches(rows, order, start_id, batch_size, bucket, "propose"):
    at = np.zeros((ids.shape[0], width), np.int32)
    own = np.zeros((ids.shape[0], width), np.int32)
    for b, k in enumerate(take):
      word_ids_k, visit = plans[k]
      starts = np.cumsum([0] + [len(w) for w in word_ids_k])  # ids[0] is start_id
      at[b, :len(visit)] = starts[visit]  # the logits before the word's first token
      own[b, :len(visit)] = [word_ids_k[p][0] for p in visit]
    top = np.asarray(_top_tokens(model, params, ids, mask, at, own, bias,
                                 num_candidates))  # [B, P, K]
    for b, k in enumerate(take):
      out[k] = [[int(t) for t in top[b, j] if allowed[t]] for j in range(len(plans[k][1]))]
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
  logits = logits.astype(jnp.float32) + bias
  logits = jnp.where(jax.nn.one_hot(own, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return jax.lax.top_k(logits, k)[1]
