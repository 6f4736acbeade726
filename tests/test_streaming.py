"""Streaming head similarity equals the materialised path, without keeping the maps."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_attnalign.analysis.similarity import head_similarity
from jax_attnalign.analysis.streaming import streaming_head_similarity
from jax_attnalign.analysis.views import VIEWS, View
from jax_attnalign.models import (PATTERNS, Accumulator, Hooks, ModelConfig, attention_maps,
                                  build_model, collect)

B, T = 3, 11
ROWS = (1, 4, 128)  # query rows a block: every row alone, blocks with padding, one block
CONFIGS = {
    "bert": ModelConfig(model_type="bert", vocab_size=53, hidden_size=20, num_layers=2,
                        num_heads=4, intermediate_size=23),
    "llama": ModelConfig(model_type="llama", vocab_size=53, hidden_size=24, num_layers=2,
                         num_heads=4, num_kv_heads=2, intermediate_size=23),
}
VIEW_CASES = list(dict.fromkeys([  # distinct views: presets may share a View
    *VIEWS.values(), View(rows="all", layers=1, drop_special=True, renormalize=True)]))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model_and_params(request):
  """Random weights drawn in NumPy (compiling model.init takes seconds on CPU)."""
  model = build_model(CONFIGS[request.param])
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, T), jnp.int32))
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda s: rng.normal(0.0, 0.5, s.shape).astype(np.float32),
                        shapes["params"])
  return model, params


def make_batch(seed, is_decoder):
  """Token ids, mask, special mask [B, T] and prompt lengths [B] (decoders)."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(1, 53, (B, T)).astype(np.int32)
  if is_decoder:  # prompts left-padded to Tp = 6, then 5 generated tokens
    lengths = np.array([6, 4, 5])
    mask = (np.arange(T) >= 6 - lengths[:, None]).astype(np.int32)
    mask[2, 9:] = 0  # stopped after EOS
    first = 6 - lengths
    prompt_lengths = np.full(B, 6)
  else:  # right padding
    lengths = np.array([11, 8, 5])
    mask = (np.arange(T) < lengths[:, None]).astype(np.int32)
    first, prompt_lengths = np.zeros(B, int), None
  special = np.zeros((B, T), np.int32)
  special[np.arange(B), first] = 1  # [CLS] / BOS
  if not is_decoder:
    special[np.arange(B), lengths - 1] = 1  # [SEP]
  return ids, mask, special, prompt_lengths


def test_streaming_equals_materialised(model_and_params):
  model, params = model_and_params
  is_decoder = model.config.is_decoder

  @jax.jit  # one compilation for every view
  def both_paths(params, ids, mask, special, prompt_lengths):
    _, state = model.apply({"params": params}, ids, mask, hooks=Hooks(capture=PATTERNS),
                           mutable=["intermediates"])
    maps = attention_maps(collect(state))
    return [([streaming_head_similarity(model, params, ids, mask, view, special_mask=special,
                                        prompt_lengths=prompt_lengths, rows=rows)
              for rows in ROWS],
             head_similarity(maps, view, attention_mask=mask, special_mask=special,
                             prompt_lengths=prompt_lengths, is_decoder=is_decoder))
            for view in VIEW_CASES]

  for view, (streamed, materialised) in zip(
      VIEW_CASES, both_paths(params, *make_batch(0, is_decoder))):
    layers = model.config.num_layers if view.layers == "all" else view.layers
    for rows, cos in zip(ROWS, streamed):
      chex.assert_shape(cos, (B, layers, 4, 4))
      chex.assert_trees_all_close(cos, materialised, atol=1e-6,
                                  custom_message=f"{view}, {rows} rows a block")


def test_query_blocks_leave_the_output_unchanged(model_and_params):
  """Accumulating the pattern computes attention a block of rows at a time; the
  model's output is the plain forward pass's, whatever the block size."""
  model, params = model_and_params
  ids, mask, _, _ = make_batch(1, model.config.is_decoder)
  count = lambda probs, slots, name: jnp.sum(probs, axis=(-2, -1))  # [B, N]: real rows
  plain = model.apply({"params": params}, ids, mask)
  for rows in ROWS:
    out, state = model.apply({"params": params}, ids, mask, mutable=["intermediates"],
                             hooks=Hooks(accumulate={PATTERNS: Accumulator(count, rows=rows)}))
    chex.assert_trees_all_close(out, plain, atol=1e-5, rtol=1e-5)
    rows_seen = collect(state)["layers.0.attn.pattern"]  # each real row sums to 1
    np.testing.assert_allclose(rows_seen, np.full((B, 4), T), atol=1e-4)


def test_accumulate_rules_are_checked(model_and_params):
  model, params = model_and_params
  ids, mask, _, _ = make_batch(0, model.config.is_decoder)
  count = Accumulator(lambda probs, slots, name: jnp.sum(probs))
  apply = lambda hooks: model.apply({"params": params}, ids, mask, hooks=hooks,
                                    mutable=["intermediates"])
  with pytest.raises(ValueError, match="only attn.pattern"):
    apply(Hooks(accumulate={"layers.0.attn.*": count}))
  with pytest.raises(ValueError, match="no other capture"):
    apply(Hooks(accumulate={PATTERNS: count}, capture="layers.1.attn.pattern"))
  with pytest.raises(ValueError, match="rows must be an int"):
    Accumulator(count.block, rows=0)


def test_summarize_sows_summaries_not_maps(model_and_params):
  model, params = model_and_params
  ids, mask, _, _ = make_batch(0, model.config.is_decoder)
  hooks = Hooks(summarize={"layers.1.attn.pattern": lambda probs, _: jnp.sum(probs, -1)})
  _, state = jax.jit(lambda p: model.apply({"params": p}, ids, mask, hooks=hooks,
                                           mutable=["intermediates"]))(params)
  assert len(jax.tree_util.tree_leaves(state)) == 1
  summary = collect(state)["layers.1.attn.pattern"]
  chex.assert_shape(summary, (B, 4, T))
  np.testing.assert_allclose(summary, 1.0, atol=1e-6)  # [B, N, T]: rows sum to 1


def test_no_retracing_over_batches(model_and_params):
  model, params = model_and_params
  is_decoder = model.config.is_decoder
  view = "gen_to_prompt_nospecial" if is_decoder else "cls_row_nospecial"
  chex.clear_trace_counter()  # the same function is traced once per model

  @jax.jit
  @chex.assert_max_traces(n=1)
  def scan(ids, mask, special, prompt_lengths):
    return streaming_head_similarity(model, params, ids, mask, view,
                                     special_mask=special, prompt_lengths=prompt_lengths)

  for seed in range(3):
    chex.assert_shape(scan(*make_batch(seed, is_decoder)), (B, 2, 4, 4))


def test_streaming_keeps_one_layer_of_maps():
  """XLA's compiled footprint: the materialised path holds every layer's maps;
  the streaming path's does not grow with depth."""
  t, heads = 128, 4
  layer_maps = heads * t * t * 4  # bytes of one layer's f32 maps, one sequence
  ids = jax.ShapeDtypeStruct((1, t), jnp.int32)
  lengths = jax.ShapeDtypeStruct((1,), jnp.int32)

  def activation_bytes(num_layers, materialise):
    cfg = ModelConfig(model_type="llama", vocab_size=53, hidden_size=32,
                      num_layers=num_layers, num_heads=heads, intermediate_size=32)
    model = build_model(cfg, task="base")
    params = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]

    def scan(params, ids, mask, lengths):
      if not materialise:
        return streaming_head_similarity(model, params, ids, mask, "gen_to_prompt",
                                         prompt_lengths=lengths)
      _, state = model.apply({"params": params}, ids, mask, hooks=Hooks(capture=PATTERNS),
                             mutable=["intermediates"])
      return head_similarity(attention_maps(collect(state)), "gen_to_prompt",
                             attention_mask=mask, prompt_lengths=lengths, is_decoder=True)

    mem = jax.jit(scan).lower(params, ids, ids, lengths).compile().memory_analysis()
    return mem.temp_size_in_bytes + mem.output_size_in_bytes

  streaming_deep = activation_bytes(5, materialise=False)
  assert streaming_deep < activation_bytes(2, materialise=False) + layer_maps / 8
  assert activation_bytes(5, materialise=True) > streaming_deep + 3 * layer_maps


def test_streaming_memory_is_linear_in_length():
  """XLA's compiled footprint of the streaming scan in 32-row blocks: doubling
  the length from 256 to 512 doubles it (within 1.3x of double), where one
  layer's maps alone would quadruple."""
  def activation_bytes(t):
    cfg = ModelConfig(model_type="llama", vocab_size=53, hidden_size=32, num_layers=2,
                      num_heads=4, intermediate_size=32)
    model = build_model(cfg, task="base")
    ids = jax.ShapeDtypeStruct((1, t), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]
    scan = lambda params, ids, mask, lengths: streaming_head_similarity(
        model, params, ids, mask, "gen_to_prompt", prompt_lengths=lengths, rows=32)
    mem = jax.jit(scan).lower(params, ids, ids, jax.ShapeDtypeStruct((1,), jnp.int32)
                              ).compile().memory_analysis()
    return mem.temp_size_in_bytes + mem.output_size_in_bytes

  short, long = activation_bytes(256), activation_bytes(512)
  assert long < 2 * 1.3 * short, (short, long)
  assert long > 4 * 32 * 512 * 4  # at least one [N, rows, S] block of f32 at 512
