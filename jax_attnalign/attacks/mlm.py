"""Substitute candidates for NWS from one of our BERT masked-LM heads.

  model, params = jax_attnalign.load_pretrained("bert-base-uncased", task="masked_lm")
  candidates = masked_lm_candidates(model, params, data.load_tokenizer(...))
  attack = NWS(candidates, mask_token=tokenizer.mask_token)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def masked_lm_candidates(model, params: Any, tokenizer, *, top_k: int = 20,
                         max_length: int = 128) -> Callable[[str], list[str]]:
  """`candidates(text_with_mask) -> list[str]`: the MLM's best whole words at the mask.

  model, params: a BERT built with task="masked_lm"; tokenizer: its WordPiece
  tokenizer (the text holds `tokenizer.mask_token`). Returns up to `top_k`
  words, best first, among the 4 * top_k highest-scoring tokens that are not
  special tokens, not `##` continuation pieces and alphabetic. Texts are padded
  to `max_length` tokens, so one compilation serves every text; a text without
  the mask (or with it truncated away) gets no candidates.
  """
  special = set(tokenizer.all_special_ids)

  @jax.jit
  def best_tokens(params, ids, mask, at):
    logits = model.apply({"params": params}, ids, mask).logits[0, at]  # [V]
    return jax.lax.top_k(logits.astype(jnp.float32), 4 * top_k)[1]

  def candidates(text: str) -> list[str]:
    enc = tokenizer(text, truncation=True, max_length=max_length, padding="max_length",
                    return_tensors="np")
    at = np.flatnonzero(enc["input_ids"][0] == tokenizer.mask_token_id)
    if not len(at):
      return []
    ids = np.asarray(best_tokens(params, enc["input_ids"].astype(np.int32),
                                 enc["attention_mask"].astype(np.int32), int(at[0])))
    words = [tokenizer.convert_ids_to_tokens(int(i)) for i in ids if int(i) not in special]
    return [w for w in words if w.isalpha()][:top_k]

  return candidates
