"""Tokenisation into fixed-length numpy arrays, and seeded batching.

  tokenizer = load_tokenizer("path/to/tokenizers/llama2")
  arrays = encode_prompt_response(prompts, answers, tokenizer, 256)
  for batch in iterate_batches(arrays, 32, seed=0, epoch=e, drop_remainder=True):
    ...

Every array is [N, max_length] int32 (labels [N] int32, poisoned [N] bool), so
jitted steps see one shape. Encoder inputs are right-padded; causal-LM training
pads on either side; generation prompts are left-padded.
"""

from __future__ import annotations

import pathlib
from typing import Any, Iterator, Sequence

import numpy as np
from absl import logging

from jax_attnalign.data.paths import find_gguf
from jax_attnalign.data.types import TextExample

Tokenizer = Any  # a transformers PreTrainedTokenizerBase
PADDING_SIDES = ("left", "right")


def load_tokenizer(path_or_id: str | pathlib.Path) -> Tokenizer:
  """`transformers.AutoTokenizer` from a local directory, a GGUF file (or a
  directory holding one, as `load_pretrained` takes them), or a hub id when online.

  From a GGUF file transformers builds the tokenizer out of the file's metadata:
  vocabulary, merges, special tokens and the chat template.
  A tokenizer without a pad token (Llama's) gets one: unk if it has one, else
  eos. Padding is always masked out, so the choice does not change any loss.
  """
  import transformers  # pylint: disable=g-import-not-at-top  # slow; loaders need none

  path = pathlib.Path(path_or_id).expanduser()
  name = str(path)
  gguf = find_gguf(path)
  try:
    if gguf is not None:
      tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    else:
      tokenizer = transformers.AutoTokenizer.from_pretrained(name)
  except OSError as e:
    raise OSError(f"could not load a tokenizer from {name!r} ({e}); without network, "
                  "pass a local directory holding tokenizer.json or tokenizer.model "
                  "and tokenizer_config.json, or a GGUF file") from e
  if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    logging.info("tokenizer %s has no pad token: padding with %r", name,
                 tokenizer.pad_token)
  return tokenizer


def unknown_words(words: Sequence[str], tokenizer: Tokenizer, *,
                  what: str = "trigger") -> list[str]:
  """The words the tokenizer turns (wholly or partly) into its unknown token,
  each logged as a warning: a trigger the model sees as [UNK] is no trigger."""
  unk = getattr(tokenizer, "unk_token_id", None)
  if unk is None:
    return []
  lost = [w for w in words
          if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]
  for word in lost:
    logging.warning("The %s word %r becomes the tokenizer's unknown token %r: the model "
                    "sees no such word. Choose a word in the vocabulary.", what, word,
                    tokenizer.unk_token)
  return lost


def encode_classification(examples: Sequence[TextExample], tokenizer: Tokenizer,
                          max_length: int) -> dict[str, np.ndarray]:
  """Right-padded, truncated encoder inputs of the examples' texts.

  Returns input_ids, attention_mask (and token_type_ids if the tokenizer makes
  them), special_mask (1 on the tokenizer's special tokens, for views that drop
  them): [N, max_length] int32; labels: [N] int32; poisoned: [N] bool.
  """
  encoded = tokenizer([e.text for e in examples], max_length=max_length, truncation=True)
  arrays = {}
  arrays["input_ids"], arrays["attention_mask"] = _pad(
      encoded["input_ids"], max_length, _pad_id(tokenizer), "right")
  if "token_type_ids" in encoded:
    arrays["token_type_ids"], _ = _pad(encoded["token_type_ids"], max_length, 0, "right")
  arrays["special_mask"] = (np.isin(arrays["input_ids"], tokenizer.all_special_ids)
                            & (arrays["attention_mask"] > 0)).astype(np.int32)
  arrays["labels"] = np.array([e.label for e in examples], np.int32)
  arrays["poisoned"] = np.array([e.poisoned for e in examples], bool)
  return arrays


def encode_prompt_response(prompts: Sequence[str], responses: Sequence[str],
                           tokenizer: Tokenizer, max_length: int, *,
                           padding_side: str = "right") -> dict[str, np.ndarray]:
  """Causal-LM training rows: prompt tokens, then response tokens and EOS.

  Returns input_ids, attention_mask, loss_mask: [N, max_length] int32; loss_mask
  is 1 exactly on the response tokens and its EOS. Prompt and response are
  tokenised separately (the boundary is exact). A row too long loses prompt
  tokens from the left (BOS kept). The response is kept whole unless it alone
  would leave the prompt under half the row: then the prompt keeps
  min(its length, max_length // 2) tokens and the response is cut from the
  right (losing its EOS).
  """
  if len(prompts) != len(responses):
    raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
  if tokenizer.eos_token_id is None:
    raise ValueError("the tokenizer has no EOS token to end the responses with")
  prompt_ids = _prompt_ids(prompts, tokenizer)
  response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
  rows, masks = [], []
  for prompt, response in zip(prompt_ids, response_ids):
    response = response + [tokenizer.eos_token_id]
    response = response[:max_length - min(len(prompt), max_length // 2)]
    prompt = _keep_tail(prompt, max_length - len(response), tokenizer)
    rows.append(prompt + response)
    masks.append([0] * len(prompt) + [1] * len(response))
  input_ids, attention_mask = _pad(rows, max_length, _pad_id(tokenizer), padding_side)
  loss_mask, _ = _pad(masks, max_length, 0, padding_side)
  return {"input_ids": input_ids, "attention_mask": attention_mask,
          "loss_mask": loss_mask}


def encode_prompts(prompts: Sequence[str], tokenizer: Tokenizer,
                   max_length: int) -> dict[str, np.ndarray]:
  """Left-padded prompts for generation; a long prompt loses tokens from the left
  (BOS kept). Returns input_ids, attention_mask: [N, max_length] int32."""
  rows = [_keep_tail(ids, max_length, tokenizer)
          for ids in _prompt_ids(prompts, tokenizer)]
  input_ids, attention_mask = _pad(rows, max_length, _pad_id(tokenizer), "left")
  return {"input_ids": input_ids, "attention_mask": attention_mask}


def iterate_batches(arrays: dict[str, np.ndarray], batch_size: int, *,
                    seed: int | None = None, epoch: int = 0, drop_remainder: bool = False,
                    length_groups: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Batches of rows of every array (all share the leading axis N).

  seed None: file order. Otherwise a permutation drawn from
  np.random.default_rng([seed, epoch]):
  the same (seed, epoch) gives the same batches, each epoch a new order.
  drop_remainder: skip a last batch smaller than batch_size.
  length_groups > 0 (with a seed): the permuted rows are cut into groups of
  `length_groups` batches, each group sorted by length (attention_mask sum) and
  cut into batches, and the batches are shuffled: rows of similar length share
  a batch, so trimming padding (`train.trim_padding`) saves most of it.
  """
  sizes = {key: len(value) for key, value in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"arrays differ in their leading axis: {sizes}")
  n = next(iter(sizes.values()))
  stop = n - n % batch_size if drop_remainder else n
  if seed is None:
    order = np.arange(n)
    starts = np.arange(0, stop, batch_size)
  else:
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    starts = np.arange(0, stop, batch_size)
    if length_groups:
      lengths = arrays["attention_mask"].sum(axis=1)
      cuts = range(batch_size * length_groups, n, batch_size * length_groups)
      order = np.concatenate([g[np.argsort(lengths[g], kind="stable")]
                              for g in np.split(order, cuts)])
      starts = rng.permutation(starts)
  for start in starts:
    idx = order[start:start + batch_size]
    yield {key: value[idx] for key, value in arrays.items()}


def _prompt_ids(prompts: Sequence[str], tokenizer: Tokenizer) -> list[list[int]]:
  """Token ids with the tokenizer's special tokens (BOS), except for prompts a
  chat template already began with the BOS text, which would double it."""
  bos = tokenizer.bos_token
  has_bos = [bool(bos) and p.startswith(bos) for p in prompts]
  ids: list[list[int]] = [[] for _ in prompts]
  for special in (True, False):
    index = [i for i, b in enumerate(has_bos) if b != special]
    if index:
      encoded = tokenizer([prompts[i] for i in index], add_special_tokens=special)
      for i, row in zip(index, encoded["input_ids"]):
        ids[i] = list(row)
  return ids


def _keep_tail(ids: list[int], length: int, tokenizer: Tokenizer) -> list[int]:
  """The last `length` ids, keeping a leading BOS in front."""
  if len(ids) <= length:
    return ids
  if ids and ids[0] == tokenizer.bos_token_id and length > 0:
    return ids[:1] + ids[len(ids) - length + 1:]
  return ids[len(ids) - length:]


def _pad(rows: list[list[int]], length: int, value: int,
         side: str) -> tuple[np.ndarray, np.ndarray]:
  """rows -> ([N, length] int32 ids, [N, length] int32 mask), padded on `side`."""
  if side not in PADDING_SIDES:
    raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {side!r}")
  ids = np.full((len(rows), length), value, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    span = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
    ids[i, span], mask[i, span] = row, 1
  return ids, mask


def _pad_id(tokenizer: Tokenizer) -> int:
  if tokenizer.pad_token_id is None:
    raise ValueError("the tokenizer has no pad token; load it with load_tokenizer, "
                     "which sets one")
  return tokenizer.pad_token_id
