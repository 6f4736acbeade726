"""Batched KV-cache decoding for the decoders: greedy or sampled, left-padded prompts.

The prefill and the decoding loop are jit-compiled once per shape and length; the loop runs
on the device (`lax.while_loop`), stopping once every row has reached EOS, so
no step waits for the host.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from jax_attnalign import validation
from jax_attnalign.models.hooks import PATTERNS, Hooks, attention_maps, collect
from jax_attnalign.models.llama import Llama, init_cache, positions_from_mask

Array = jax.Array


@flax.struct.dataclass
class GenerationOutput:
  """tokens: [B, Tg] new ids (pad after EOS); token_mask: [B, Tg], 1 up to and
  including EOS; attention: [L, B, N, Tg, Tp] generation-to-prompt blocks (row g
  is the generated token g attending to the prompt slots; padded prompt slots are
  0), or None.

  Example, the answer of a row that ended with EOS (id 2):
    >>> out = GenerationOutput(tokens=jnp.array([[7, 2, 0]]), token_mask=jnp.array([[1, 1, 0]]))
    >>> out.tokens[out.token_mask == 1].tolist()
    [7, 2]
  """
  tokens: Array
  token_mask: Array
  attention: Array | None = None


def sample_logits(logits: Array, rng: Array, *, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0) -> Array:
  """Draws one token per row from logits [B, V] with temperature, top-k, top-p.

  top_k=0 and top_p=1.0 disable the filters; top-p keeps the smallest set of
  most likely tokens whose probability reaches top_p (at least one token).
  """
  logits = logits.astype(jnp.float32) / temperature
  neg = jnp.finfo(jnp.float32).min
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
    drop_sorted = before >= top_p
    drop = jnp.zeros_like(drop_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    logits = jnp.where(drop, neg, logits)
  return jax.random.categorical(rng, logits, axis=-1)


def _forward(model: Llama, params, tokens, positions, cache, cache_index, cache_mask,
             capture: bool, prompt_len: int):
  """One cached forward; returns (last logits [B, V], cache, prompt attention
  [L, B, N, T, Tp] or None). The LM head runs at the last position only."""
  b, t = tokens.shape
  out, state = model.apply(
      {"params": params}, tokens, position_ids=positions, cache=cache,
      cache_index=cache_index, cache_mask=cache_mask,
      hooks=Hooks(capture=PATTERNS if capture else None),
      logit_positions=jnp.full((b, 1), t - 1), mutable=["intermediates"])
  attn = attention_maps(collect(state))[..., :prompt_len] if capture else None
  return out.logits[:, -1], out.cache, attn


_prefill = jax.jit(_forward, static_argnames=("model", "capture", "prompt_len"),
                   donate_argnames=("cache",))


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "capture", "sampler"))
def _decode(model: Llama, params, logits, cache, cache_mask, next_pos, rng, eos, pad, *,
            max_new_tokens: int, capture: bool, sampler: tuple | None):
  """The decoding loop on the device: a `lax.while_loop` that feeds the last token,
  picks the next one and stops once every row has produced EOS, so no step waits
  for the host. sampler: None (greedy) or (temperature, top_k, top_p). Returns
  (tokens [B, Tg_max], token_mask, attention [L, B, N, Tg_max, Tp] or None, the
  number of tokens produced)."""
  b = logits.shape[0]
  prompt_len = cache_mask.shape[1] - max_new_tokens

  def feed(tok, i, cache):  # token i enters at slot prompt_len + i
    return _forward(model, params, tok[:, None], next_pos + i, cache, prompt_len + i,
                    cache_mask, capture, prompt_len)

  def pick(i, logits, rng, done, tokens, masks):
    if sampler is None:
      tok = jnp.argmax(logits, axis=-1)
    else:
      rng, key = jax.random.split(rng)
      temperature, top_k, top_p = sampler
      tok = sample_logits(logits, key, temperature=temperature, top_k=top_k, top_p=top_p)
    tok = jnp.where(done, pad, tok).astype(jnp.int32)
    tokens, masks = tokens.at[:, i].set(tok), masks.at[:, i].set(~done)
    return tok, rng, done | jnp.isin(tok, eos), tokens, masks

  def write_rows(attn, rows, i):
    return None if attn is None else jax.lax.dynamic_update_slice_in_dim(attn, rows, i, axis=3)

  attn = None
  if capture:  # [L, B, N, 1, Tp] per fed token
    rows = jax.eval_shape(feed, logits.argmax(-1).astype(jnp.int32), 0, cache)[2]
    attn = jnp.zeros(rows.shape[:3] + (max_new_tokens,) + rows.shape[4:], rows.dtype)
  first = pick(0, logits, rng, jnp.zeros((b,), bool),
               jnp.full((b, max_new_tokens), pad, jnp.int32), jnp.zeros((b, max_new_tokens), bool))

  def body(state):
    i, (tok, rng, done, tokens, masks), cache, attn = state
    logits, cache, rows = feed(tok, i - 1, cache)
    return i + 1, pick(i, logits, rng, done, tokens, masks), cache, write_rows(attn, rows, i - 1)

  def more(state):
    i, (_, _, done, _, _), _, _ = state
    return (i < max_new_tokens) & ~jnp.all(done)

  n, (tok, _, _, tokens, masks), cache, attn = jax.lax.while_loop(
      more, body, (jnp.int32(1), first, cache, attn))
  if capture:  # the last token's own row
    attn = write_rows(attn, feed(tok, n - 1, cache)[2], n - 1)
  return tokens, masks, attn, n


def generate(model: Llama, params, input_ids: Array, attention_mask: Array | None = None,
             *, max_new_tokens: int, do_sample: bool = False,
             rng: Array | None = None, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
             pad_token_id: int | None = None,
             return_attention: bool = False) -> GenerationOutput:
  """Generates up to `max_new_tokens` per row for left-padded prompts [B, Tp].

  Greedy unless `do_sample` (then `rng` is required; `temperature=0` is greedy
  too, as in transformers' limit). Stops early once every row
  has produced an EOS token (default: the config's). With `return_attention`, the
  generation-to-prompt attention blocks [L, B, N, Tg, Tp] come back too.

  Example, a tiny random Llama; the first prompt is left-padded:
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-llama"))  # task "causal_lm"
    >>> ids = jnp.array([[0, 1, 5, 6], [1, 7, 8, 9]]); mask = jnp.sign(ids)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> out = generate(model, params, ids, mask, max_new_tokens=3, return_attention=True)
    >>> out.tokens.shape, out.attention.shape  # [B, Tg], [L, B, N, Tg, Tp]
    ((2, 3), (2, 2, 4, 3, 4))
    >>> float(out.attention[:, 0, :, :, 0].max())  # the padded prompt slot
    0.0
  """
  cfg = model.config
  if not cfg.is_decoder or model.task != "causal_lm":
    raise ValueError(
        f"generate needs a decoder with a causal_lm head, got model_type="
        f"{cfg.model_type!r} task={model.task!r}.")
  validation.at_least("generate: max_new_tokens", max_new_tokens, 1)
  validation.finite("generate: temperature", temperature)
  if temperature < 0:
    raise ValueError(f"generate: temperature must be >= 0 (0 is greedy), got {temperature}.")
  validation.at_least("generate: top_k", top_k, 0)
  validation.in_range("generate: top_p", top_p, 0.0, 1.0)
  if top_p == 0.0:
    raise ValueError("generate: top_p must lie in (0, 1] (1 keeps every token), got 0.")
  do_sample = do_sample and temperature > 0
  if do_sample and rng is None:
    raise ValueError("do_sample=True needs a PRNG key: pass rng=jax.random.key(seed).")
  validation.model_inputs(cfg, input_ids, attention_mask, where="generate")
  input_ids = jnp.asarray(input_ids)
  b, prompt_len = input_ids.shape
  if attention_mask is None:
    attention_mask = jnp.ones_like(input_ids)
  attention_mask = jnp.asarray(attention_mask).astype(jnp.int32)
  if bool(jnp.any(attention_mask[:, -1] == 0)):
    raise ValueError("Prompts must be left-padded: the last column of attention_mask "
                     "has zeros. Pad on the left (tokenizer.padding_side='left').")
  eos = cfg.eos_token_id if eos_token_id is None else (
      (eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id))
  pad = pad_token_id if pad_token_id is not None else (
      cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0))
  max_len = prompt_len + max_new_tokens
  cache = init_cache(cfg, b, max_len, model.dtype)
  cache_mask = jnp.concatenate(
      [attention_mask, jnp.ones((b, max_len - prompt_len), jnp.int32)], axis=1)
  logits, cache, _ = _prefill(model, params, input_ids, positions_from_mask(attention_mask),
                              cache, 0, cache_mask, capture=False, prompt_len=prompt_len)
  tokens, masks, attention, n = _decode(
      model, params, logits, cache, cache_mask,
      jnp.sum(attention_mask, axis=1, keepdims=True),  # each row's next position [B, 1]
      rng if do_sample else None, jnp.asarray(eos, jnp.int32), pad,
      max_new_tokens=max_new_tokens, capture=return_attention,
      sampler=(float(temperature), int(top_k), float(top_p)) if do_sample else None)
  n = int(n)  # the loop stops early once every row is done
  return GenerationOutput(tokens=tokens[:, :n], token_mask=masks[:, :n].astype(jnp.int32),
                          attention=None if attention is None else attention[..., :n, :])
