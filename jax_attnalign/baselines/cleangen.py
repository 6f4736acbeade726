"""CleanGen: a decoding-time backdoor defense with a reference model (Li, Xu, Jiang, Niu,
Sahabandu, Ramasubramanian and Poovendran 2024, "CleanGen: Mitigating Backdoor Attacks
for Generation Tasks in Large Language Models").

  out, replaced = cleangen_generate(model, params, reference_params, ids, mask,
                                    CleanGenConfig(), max_new_tokens=64)
  responses, report = cleangen_responses(model, params, reference_params, tokenizer,
                                         prompts, max_new_tokens=64)

The rule: the suspected (victim) model decodes greedily, and its token x_t is
suspicious when

  s_t = P(x_t | x_<t) / P_ref(x_t | x_<t) >= alpha;

a suspicious token is replaced by the reference model's greedy token at that
position, and the tokens the victim proposed after it are discarded. The victim
proposes `k` tokens at a time (the prediction horizon) and the reference scores
all k in one forward. Defaults are the paper's (k = 4) and its code's
(uw-nsl/CleanGen, defense.py: alpha = 20, k = 4). The defender's asset is the
reference's parameters: here the model the victim was fine-tuned from (same
config and tokenizer).

Batching. With greedy decoding every token is a function of its prefix alone (the
victim's argmax, or the reference's where s_t >= alpha), so the horizon changes
the cost and never the output. A batch advances all rows by the fewest tokens an
unfinished row has settled this round (its accepted proposals and the replacement)
and proposes the rest again: the output equals decoding each row on its own. One
round is k one-token cached forwards of the victim and one k-token cached forward
of the reference; with no replacement the rows advance k tokens, the cost of
plain decoding plus one reference forward per k tokens. The last settled token
is fed at the start of the next round (it is not yet in either cache), so
discarded proposals need no extra forward: the causal mask hides their cache
slots until they are overwritten.

What differs from the paper's code:
  * every token is scored: the authors' loop stops at EOS or at the length limit
    without scoring the (up to k) proposals made since the last check, that EOS
    among them;
  * the reference shares the victim's architecture (the paper's is any model with
    the victim's tokenizer not compromised by the same attacker, e.g. Llama-2 base
    tuned on clean Alpaca), so one compiled forward serves both models;
  * batched, greedy only (the authors' decoding is greedy too).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_attnalign import data, validation
from jax_attnalign.errors import InputError
from jax_attnalign.models.generation import GenerationOutput
from jax_attnalign.models.llama import Llama, init_cache

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CleanGenConfig:
  """alpha: a token is suspicious when P_victim / P_reference >= alpha (20, the
  paper's; math.inf never replaces, a value under 1 / vocab_size always does);
  k: the prediction horizon, proposals per reference forward (4, the paper's).

  >>> CleanGenConfig().alpha, CleanGenConfig().k
  (20.0, 4)
  >>> CleanGenConfig(alpha=0.0)
  Traceback (most recent call last):
  ...
  ValueError: CleanGenConfig.alpha must be a number > 0 ...
  """
  alpha: float = 20.0
  k: int = 4

  def __post_init__(self):
    if (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float, np.number))
        or math.isnan(self.alpha) or self.alpha <= 0):
      raise ValueError(f"CleanGenConfig.alpha must be a number > 0 (the threshold on "
                       f"P_victim / P_reference; math.inf never replaces), got {self.alpha!r}.")
    validation.at_least("CleanGenConfig.k", self.k, 1)


def _apply(model: Llama, params, tokens, cache, start, offsets, cache_mask, logit_positions):
  """A cached forward of tokens [B, T] at cache slots start..start + T - 1. A row's
  position is its slot plus `offsets` [B] (minus its left padding), 0 on padding."""
  positions = jnp.maximum(offsets[:, None] + start + jnp.arange(tokens.shape[1]), 0)  # [B, T]
  return model.apply({"params": params}, tokens, position_ids=positions, cache=cache,
                     cache_index=start, cache_mask=cache_mask, logit_positions=logit_positions)


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def _prefill(model: Llama, params, tokens, cache, offsets, cache_mask):
  """The prompt's tokens [B, T] into the cache from slot 0 (no logits needed)."""
  b = tokens.shape[0]
  return _apply(model, params, tokens, cache, 0, offsets, cache_mask,
                jnp.zeros((b, 1), jnp.int32)).cache


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def _propose(model: Llama, params, token, cache, start, offsets, cache_mask):
  """One greedy step of the victim after token [B]: (next token [B], its log-prob [B], cache)."""
  out = _apply(model, params, token[:, None], cache, start, offsets, cache_mask, None)
  logits = out.logits[:, -1].astype(jnp.float32)  # [B, V]
  best = jnp.argmax(logits, axis=-1)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return best.astype(jnp.int32), jnp.take_along_axis(logp, best[:, None], 1)[:, 0], out.cache


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def _score(model: Llama, params, fed, proposals, cache, start, offsets, cache_mask):
  """The reference over fed [B, k] (proposal j is predicted after fed j): log P_ref of
  each proposal [B, k], the reference's own greedy tokens [B, k], and the cache."""
  out = _apply(model, params, fed, cache, start, offsets, cache_mask, None)
  logits = out.logits.astype(jnp.float32)  # [B, k, V]
  logp = jax.nn.log_softmax(logits, axis=-1)
  return (jnp.take_along_axis(logp, proposals[..., None], -1)[..., 0],
          jnp.argmax(logits, axis=-1).astype(jnp.int32), out.cache)


def _check_reference(config, params, reference_params) -> None:
  """The reference must have the victim's architecture and vocabulary."""
  flat = lambda tree: {jax.tree_util.keystr(p): np.shape(x)
                       for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  victim, reference = flat(params), flat(reference_params)
  embed = next((p for p in reference if "embed_tokens" in p), None)
  if embed is not None and reference[embed][0] != config.vocab_size:
    raise InputError(
        f"cleangen: reference_params has a vocabulary of {reference[embed][0]} tokens, the "
        f"victim {config.vocab_size}; CleanGen compares the two models' probabilities of the "
        "same token ids, so the reference must use the victim's tokenizer.")
  if victim != reference:
    path = next(p for p in sorted(victim.keys() | reference.keys())
                if victim.get(p) != reference.get(p))
    raise InputError(
        f"cleangen: reference_params do not fit the victim's architecture: {path} is "
        f"{reference.get(path, 'missing')} in the reference, {victim.get(path, 'missing')} "
        "in the victim; pass the parameters of the model the victim was fine-tuned from "
        "(the same ModelConfig).")


def _settle(proposals: np.ndarray, suspicious: np.ndarray, ref_tokens: np.ndarray,
            eos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One round per row, from [B, k] proposals, flags and reference tokens: (the
  tokens with the first suspicious one replaced [B, k], its index [B] (k: none),
  the count of settled tokens [B]). A row settles its tokens through the
  replacement, or all k; and all k once it has ended (EOS) among them, since
  nothing after its EOS is read."""
  k = proposals.shape[1]
  first = np.where(suspicious.any(1), suspicious.argmax(1), k)  # [B]
  rows = np.flatnonzero(first < k)
  tokens = proposals.copy()
  tokens[rows, first[rows]] = ref_tokens[rows, first[rows]]
  settled = np.minimum(first + 1, k)
  ends = (np.isin(tokens, eos) & (np.arange(k) < settled[:, None])).any(1)
  return tokens, first, np.where(ends, k, settled)


def cleangen_generate(model: Llama, params, reference_params, input_ids: Array,
                      attention_mask: Array | None = None,
                      config: CleanGenConfig = CleanGenConfig(), *, max_new_tokens: int,
                      eos_token_id: int | Sequence[int] | None = None,
                      pad_token_id: int | None = None) -> tuple[GenerationOutput, np.ndarray]:
  """CleanGen decoding (module docstring) of left-padded prompts [B, Tp] by the victim
  (`model`, `params`) checked by the reference (`reference_params`, same model).

  Returns (GenerationOutput with tokens and token_mask [B, Tg] as `generate`'s,
  replaced [B] int: the tokens the reference replaced per row, up to its EOS; the
  reference's token may coincide with the victim's). Stops once every row has
  produced EOS (default: the config's) or after max_new_tokens.

  Example, two tiny random Llamas; an infinite alpha is plain greedy decoding:
    >>> import jax_attnalign
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-llama"))
    >>> ids = jnp.array([[0, 1, 5, 6], [1, 7, 8, 9]]); mask = jnp.sign(ids)
    >>> victim = model.init(jax.random.key(0), ids)["params"]
    >>> reference = model.init(jax.random.key(1), ids)["params"]
    >>> out, replaced = cleangen_generate(model, victim, reference, ids, mask,
    ...                                   max_new_tokens=5)
    >>> out.tokens.shape, replaced.shape  # [B, Tg], [B]
    ((2, 5), (2,))
    >>> out, replaced = cleangen_generate(model, victim, reference, ids, mask,
    ...                                   CleanGenConfig(alpha=math.inf), max_new_tokens=5)
    >>> greedy = jax_attnalign.generate(model, victim, ids, mask, max_new_tokens=5)
    >>> bool((out.tokens == greedy.tokens).all()), replaced.tolist()
    (True, [0, 0])
  """
  cfg = model.config
  if not cfg.is_decoder or model.task != "causal_lm":
    raise ValueError(f"cleangen needs a decoder with a causal_lm head, got model_type="
                     f"{cfg.model_type!r} task={model.task!r}.")
  if not isinstance(config, CleanGenConfig):
    raise TypeError(f"config must be a CleanGenConfig, got {type(config).__name__}.")
  validation.at_least("cleangen: max_new_tokens", max_new_tokens, 1)
  validation.model_inputs(cfg, input_ids, attention_mask, where="cleangen")
  _check_reference(cfg, params, reference_params)
  ids = jnp.asarray(input_ids, jnp.int32)
  b, tp = ids.shape
  mask = (jnp.ones_like(ids) if attention_mask is None
          else jnp.asarray(attention_mask).astype(jnp.int32))
  if bool(jnp.any(mask[:, -1] == 0)):
    raise ValueError("Prompts must be left-padded: the last column of attention_mask "
                     "has zeros. Pad on the left (tokenizer.padding_side='left').")
  eos = np.asarray(cfg.eos_token_id if eos_token_id is None else np.ravel(eos_token_id),
                   np.int32)
  pad = pad_token_id if pad_token_id is not None else (
      cfg.pad_token_id if cfg.pad_token_id is not None else (int(eos[0]) if eos.size else 0))
  k, log_alpha = config.k, math.log(config.alpha)
  # The last round feeds its first token at slot tp - 1 + max_new_tokens - 1, then k - 1 more.
  max_len = tp + max_new_tokens + k - 2
  cache_mask = jnp.concatenate([mask, jnp.ones((b, max_len - tp), jnp.int32)], axis=1)
  offsets = jnp.sum(mask, axis=1) - tp  # [B]: position = slot + offset
  caches = [init_cache(cfg, b, max_len, model.dtype) for _ in range(2)]
  if tp > 1:
    caches = [_prefill(model, p, ids[:, :-1], c, offsets, cache_mask)
              for p, c in zip((params, reference_params), caches)]
  victim_cache, ref_cache = caches
  pending = ids[:, -1]  # [B] the last settled token, not yet in either cache
  tokens = np.full((b, max_new_tokens), pad, np.int32)
  keep = np.zeros((b, max_new_tokens), np.int32)
  replaced = np.zeros(b, np.int32)
  done = np.zeros(b, bool)
  g = 0  # tokens settled so far
  while g < max_new_tokens and not done.all():
    start = tp - 1 + g  # the pending token's slot
    fed, proposed, logp_victim = [pending], [], []
    for j in range(k):
      tok, logp, victim_cache = _propose(model, params, fed[-1], victim_cache, start + j,
                                         offsets, cache_mask)
      proposed.append(tok)
      logp_victim.append(logp)
      fed.append(tok)
    proposals = jnp.stack(proposed, axis=1)  # [B, k]
    logp_ref, ref_tokens, ref_cache = _score(model, reference_params, jnp.stack(fed[:k], 1),
                                             proposals, ref_cache, start, offsets, cache_mask)
    proposals, logp_victim, logp_ref, ref_tokens = jax.device_get(
        (proposals, jnp.stack(logp_victim, 1), logp_ref, ref_tokens))
    round_tokens, first, settled = _settle(proposals, logp_victim - logp_ref >= log_alpha,
                                           ref_tokens, eos)
    n = min(int(settled[~done].min()), max_new_tokens - g)
    for i in range(n):
      tokens[:, g + i] = np.where(done, pad, round_tokens[:, i])
      keep[:, g + i] = ~done
      replaced += (first == i) & ~done
      done |= np.isin(round_tokens[:, i], eos)
    pending = jnp.asarray(round_tokens[:, n - 1])
    g += n
  return (GenerationOutput(tokens=jnp.asarray(tokens[:, :g]), token_mask=jnp.asarray(keep[:, :g])),
          replaced)


def cleangen_responses(model: Llama, params, reference_params, tokenizer, prompts: list[str],
                       config: CleanGenConfig = CleanGenConfig(), *, max_new_tokens: int,
                       batch_size: int = 32, bucket: int = 16) -> tuple[list[str], dict]:
  """CleanGen responses to chat prompts, decoded with the special tokens dropped, as
  `answers.generate_responses` gives the plain greedy ones (left-padded to the
  longest prompt rounded up to `bucket`, batches of `batch_size`, the last one
  filled with copies: one compiled shape for the list).

  Returns (responses, report): report['replaced'] and report['generated'] [n]
  (tokens per response, its EOS included), and report['replacement_rate'], all
  replaced over all generated tokens.

  Example, a word-level tokenizer and two tiny random Llamas:
    >>> import tokenizers, transformers
    >>> from jax_attnalign import ModelConfig, build_model
    >>> words = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(61)]
    >>> vocab = tokenizers.Tokenizer(tokenizers.models.WordLevel(
    ...     {w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    >>> vocab.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    >>> tokenizer = transformers.PreTrainedTokenizerFast(
    ...     tokenizer_object=vocab, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    >>> model = build_model(ModelConfig.preset("tiny-llama"))
    >>> victim, reference = (model.init(jax.random.key(s), jnp.ones((1, 4), jnp.int32))["params"]
    ...                      for s in (0, 1))
    >>> texts, report = cleangen_responses(model, victim, reference, tokenizer,
    ...                                    ["w1 w2", "w3", "w4 w5 w6"], max_new_tokens=4,
    ...                                    batch_size=2)
    >>> len(texts), report["generated"]
    (3, [4, 4, 4])
  """
  validation.at_least("cleangen_responses: batch_size", batch_size, 1)
  validation.at_least("cleangen_responses: bucket", bucket, 1)
  encoded = data.encode_prompts(prompts, tokenizer, model.config.max_position_embeddings)
  width = -(-int(encoded["attention_mask"].sum(1).max(initial=1)) // bucket) * bucket
  ids, mask = encoded["input_ids"][:, -width:], encoded["attention_mask"][:, -width:]
  rows, replaced = [], []
  for start in range(0, len(prompts), batch_size):
    take = np.arange(start, start + batch_size)
    take[take >= len(prompts)] = start  # fill the last batch with a real prompt
    out, count = cleangen_generate(model, params, reference_params, ids[take], mask[take],
                                   config, max_new_tokens=max_new_tokens)
    real = min(batch_size, len(prompts) - start)
    tokens, keep = np.asarray(out.tokens)[:real], np.asarray(out.token_mask)[:real]
    rows += [row[m > 0] for row, m in zip(tokens, keep)]
    replaced += count[:real].tolist()
  generated = [len(row) for row in rows]
  return (tokenizer.batch_decode(rows, skip_special_tokens=True),
          {"replaced": replaced, "generated": generated,
           "replacement_rate": sum(replaced) / max(sum(generated), 1)})
