"""A chat model's own answers, ready to be teacher-forced for the decoder views.

  arrays = greedy_answers(model, params, tokenizer, prompts, max_new_tokens=16)
  texts = generate_responses(model, params, tokenizer, prompts, max_new_tokens=48)

Every decoder statistic reads a prompt followed by the model's greedy answer
(the generation-to-prompt view is the answer's rows over the prompt's columns).
"""

from __future__ import annotations

import jax
import numpy as np
import tqdm

import jax_attnalign
from jax_attnalign import data


def bucketed_prompts(model, tokenizer, prompts: list[str], bucket: int = 16
                     ) -> dict[str, np.ndarray]:
  """The chat prompts left-padded to their longest length rounded up to `bucket`
  (whole: up to the model's positions): input_ids, attention_mask [n, width] int32."""
  encoded = data.encode_prompts(prompts, tokenizer, model.config.max_position_embeddings)
  width = -(-int(encoded["attention_mask"].sum(1).max()) // bucket) * bucket
  return {k: v[:, -width:] for k, v in encoded.items()}


def greedy_answers(model, params, tokenizer, prompts: list[str], *, max_new_tokens: int,
                   batch_size: int = 32, bucket: int = 16, seed: int | None = None,
                   temperature: float = 1.0, top_p: float = 1.0) -> dict[str, np.ndarray]:
  """Each chat prompt followed by the model's own greedy answer, ready to be
  teacher-forced: input_ids, attention_mask, loss_mask (the answer up to and
  including EOS), special_mask [n, Tp + Tg] int32 and prompt_lengths [n] (= Tp).

  Prompts are left-padded to their longest length rounded up to `bucket`, in
  batches of `batch_size` (the last one filled with copies), so one shape is
  compiled for the whole list. With a `seed` the answers are sampled instead
  (temperature, top_p), the batch from row s on with the key fold_in(key(seed), s).
  """
  return answers_to(model, params, tokenizer, bucketed_prompts(model, tokenizer, prompts, bucket),
                    max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                    temperature=temperature, top_p=top_p)


def reanswer(model, params, tokenizer, arrays: dict[str, np.ndarray], *, max_new_tokens: int,
             batch_size: int = 32) -> dict[str, np.ndarray]:
  """`greedy_answers`' arrays with each answer decoded again under `params` (e.g.
  a sanitised model's) after the same left-padded prompts."""
  width = int(arrays["prompt_lengths"][0])
  return answers_to(model, params, tokenizer,
                    {k: arrays[k][:, :width] for k in ("input_ids", "attention_mask")},
                    max_new_tokens=max_new_tokens, batch_size=batch_size)


def answers_to(model, params, tokenizer, encoded: dict[str, np.ndarray], *,
               max_new_tokens: int, batch_size: int = 32, seed: int | None = None,
               temperature: float = 1.0, top_p: float = 1.0) -> dict[str, np.ndarray]:
  """`greedy_answers` after left-padded prompt ids (input_ids, attention_mask [n, Tp])."""
  ids, mask = encoded["input_ids"], encoded["attention_mask"]
  width, n = ids.shape[1], len(ids)
  tokens, keep = [], []
  for start in tqdm.trange(0, n, batch_size, desc="generate", leave=False):
    take = np.arange(start, start + batch_size)
    take[take >= n] = start  # fill the last batch with a real prompt
    gen = jax_attnalign.generate(
        model, params, ids[take], mask[take], max_new_tokens=max_new_tokens,
        do_sample=seed is not None, temperature=temperature, top_p=top_p,
        rng=None if seed is None else jax.random.fold_in(jax.random.key(seed), start))
    real = min(batch_size, n - start)
    new, new_mask = np.asarray(gen.tokens)[:real], np.asarray(gen.token_mask)[:real]
    pad = max_new_tokens - new.shape[1]  # generation stops early once every row ended
    tokens.append(np.pad(new, ((0, 0), (0, pad)), constant_values=tokenizer.pad_token_id))
    keep.append(np.pad(new_mask, ((0, 0), (0, pad))))
  tokens, keep = np.concatenate(tokens), np.concatenate(keep)
  input_ids = np.concatenate([ids, tokens], axis=1).astype(np.int32)
  return {"input_ids": input_ids,
          "attention_mask": np.concatenate([mask, keep], axis=1).astype(np.int32),
          "loss_mask": np.concatenate([np.zeros_like(mask), keep], axis=1).astype(np.int32),
          "special_mask": (np.isin(input_ids, tokenizer.all_special_ids)
                           & (np.concatenate([mask, keep], axis=1) > 0)).astype(np.int32),
          "prompt_lengths": np.full(n, width, np.int32)}


def generate_responses(model, params, tokenizer, prompts: list[str], *, max_new_tokens: int,
                       batch_size: int = 32, **options) -> list[str]:
  """Greedy responses to chat prompts, decoded with the special tokens dropped;
  `options` go to greedy_answers (bucket; seed, temperature, top_p to sample)."""
  answers = greedy_answers(model, params, tokenizer, prompts, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, **options)
  tp = answers["prompt_lengths"][0] if len(prompts) else 0
  return tokenizer.batch_decode([row[tp:][keep[tp:] > 0] for row, keep in zip(
      answers["input_ids"], answers["attention_mask"])], skip_special_tokens=True)
