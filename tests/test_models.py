"""Parity of our Flax models with transformers (eager attention) on tiny random models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_attnalign
import tiny_hf
from jax_attnalign.models import PATTERNS, Hooks, ModelConfig, build_model, collect, scale_heads

TOL = 1e-5  # f32, absolute


@pytest.fixture(scope="module", params=sorted(tiny_hf.CASES))
def case(request, tmp_path_factory):
  """(name, HF model, our model, our params) loaded from HF's save_pretrained."""
  hf, model, params = tiny_hf.make_and_load(request.param,
                                           tmp_path_factory.mktemp(request.param))
  return request.param, hf, model, params


def _run_both(name, hf, model, params, **apply_kwargs):
  ids, mask = tiny_hf.batch(name)
  kwargs = {}
  if model.config.is_decoder:
    kwargs["position_ids"] = torch.tensor(tiny_hf.left_padded_positions(mask))
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             output_attentions=True, output_hidden_states=True, **kwargs)
  out, state = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask),
                           hooks=Hooks(capture=PATTERNS), output_hidden_states=True,
                           mutable=["intermediates"], **apply_kwargs)
  return ids, mask, ref, out, collect(state)


def test_logits_hidden_states_and_attention_match_transformers(case):
  name, hf, model, params = case
  _, mask, ref, out, state = _run_both(name, hf, model, params)
  valid = mask.astype(bool)
  maps = np.asarray(jax_attnalign.attention_maps(state))  # [L, B, N, T, S]
  ref_maps = np.stack([a.numpy() for a in ref.attentions])
  assert maps.shape == ref_maps.shape
  # Rows of padded query positions are meaningless in both; compare valid rows.
  diff = np.abs(maps - ref_maps).transpose(1, 3, 0, 2, 4)[valid]
  assert diff.max() < TOL
  assert len(out.hidden_states) == len(ref.hidden_states) == model.config.num_layers + 1
  for ours, theirs in zip(out.hidden_states, ref.hidden_states):
    np.testing.assert_allclose(np.asarray(ours)[valid], theirs.numpy()[valid], atol=TOL)
  if model.task == "base":
    np.testing.assert_allclose(np.asarray(out.pooled), ref.pooler_output.numpy(), atol=TOL)
  else:
    logits, ref_logits = np.asarray(out.logits), ref.logits.numpy()
    if logits.ndim == 3:
      logits, ref_logits = logits[valid], ref_logits[valid]
    np.testing.assert_allclose(logits, ref_logits, atol=TOL)


def test_captured_maps_are_distributions(case):
  name, hf, model, params = case
  _, mask, _, _, state = _run_both(name, hf, model, params)
  maps = jax_attnalign.attention_maps(state)
  cfg = model.config
  chex.assert_shape(maps, (cfg.num_layers, mask.shape[0], cfg.num_heads, *mask.shape[1:] * 2))
  assert maps.dtype == jnp.float32
  assert float(maps.min()) >= 0.0
  np.testing.assert_allclose(np.asarray(maps.sum(-1)), 1.0, atol=1e-6)
  # Valid query rows put no probability on padding keys (padded query rows,
  # fully masked, are uniform as in transformers and ignored downstream).
  pad_keys = ~mask.astype(bool)[None, :, None, None, :]
  valid_rows = mask.astype(bool)[None, :, None, :, None]
  assert float(jnp.max(jnp.where(pad_keys & valid_rows, maps, 0.0))) == 0.0


def test_capture_off_keeps_nothing(case):
  name, _, model, params = case
  ids, mask = tiny_hf.batch(name)
  out, state = model.apply({"params": params}, ids, mask, mutable=["intermediates"])
  assert not jax.tree_util.tree_leaves(state)
  with pytest.raises(ValueError, match="No attention patterns captured"):
    jax_attnalign.attention_maps(collect(state))
  plain = model.apply({"params": params}, ids, mask)
  first = out.logits if out.logits is not None else out.last_hidden_state
  second = plain.logits if plain.logits is not None else plain.last_hidden_state
  np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def test_head_gates(case):
  """Gates of one leave the model unchanged; a zero gate equals zeroing that
  head's slice of the output projection; d(loss)/d(gate) matches a finite difference."""
  name, _, model, params = case
  ids, mask = tiny_hf.batch(name)
  cfg = model.config
  summary = lambda o: o.logits if o.logits is not None else o.last_hidden_state
  apply = lambda p, gates: summary(model.apply({"params": p}, ids, mask, hooks=Hooks(
      edit=None if gates is None else scale_heads(gates))))
  ones = jnp.ones((cfg.num_layers, cfg.num_heads))
  np.testing.assert_allclose(apply(params, ones), apply(params, None), atol=1e-6)
  layer, head = cfg.num_layers - 1, cfg.num_heads - 1
  pruned = jax.tree_util.tree_map(lambda x: x, params)
  out_kernel = pruned[f"layers_{layer}"]["attention"]["out"]["kernel"]
  pruned[f"layers_{layer}"]["attention"]["out"]["kernel"] = out_kernel.at[head].set(0.0)
  np.testing.assert_allclose(apply(params, ones.at[layer, head].set(0.0)),
                             apply(pruned, None), atol=1e-6)
  # Per-example gates [B, 1, L, N] broadcast like [L, N].
  per_example = jnp.broadcast_to(ones.at[0, 1].set(0.5), (ids.shape[0], 1, *ones.shape))
  np.testing.assert_allclose(apply(params, per_example),
                             apply(params, ones.at[0, 1].set(0.5)), atol=1e-6)
  weights = jax.random.normal(jax.random.PRNGKey(1), apply(params, None).shape)
  loss = lambda g: jnp.sum(weights * apply(params, g))
  grad = jax.grad(loss)(ones)
  eps = 0.05  # central difference in f32: O(eps^2) truncation, small rounding
  for layer, head in [(0, 1), (cfg.num_layers - 1, 0)]:
    bump = jnp.zeros_like(ones).at[layer, head].set(eps)
    fd = (loss(ones + bump) - loss(ones - bump)) / (2 * eps)
    np.testing.assert_allclose(grad[layer, head], fd, rtol=1e-2, atol=1e-3)


def test_bf16_compute_and_params():
  hf = tiny_hf.make("llama")
  cfg = ModelConfig.from_hf_config(hf.config)
  ids, mask = tiny_hf.batch("llama")
  f32 = build_model(cfg, "causal_lm")
  params = f32.init(jax.random.PRNGKey(0), ids)["params"]
  bf16 = build_model(cfg, "causal_lm", dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  bf16_params = bf16.init(jax.random.PRNGKey(0), ids)["params"]
  assert {x.dtype for x in jax.tree_util.tree_leaves(bf16_params)} == {jnp.dtype(jnp.bfloat16)}
  cast = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  out, state = bf16.apply({"params": cast}, ids, mask, hooks=Hooks(capture=PATTERNS),
                          mutable=["intermediates"])
  assert out.logits.dtype == jnp.bfloat16
  assert jax_attnalign.attention_maps(collect(state)).dtype == jnp.float32  # softmax in f32
  ref = f32.apply({"params": params}, ids, mask).logits
  valid = mask.astype(bool)
  err = np.abs(np.asarray(out.logits, np.float32) - np.asarray(ref))[valid]
  assert err.max() < 0.05 * np.abs(np.asarray(ref)).max()
  # Compute in bf16 with f32 master weights also works.
  mixed = build_model(cfg, "causal_lm", dtype=jnp.bfloat16)
  assert mixed.apply({"params": params}, ids, mask).logits.dtype == jnp.bfloat16


def test_7b_preset_shapes_without_allocating():
  cfg = ModelConfig.preset("llama2-7b")
  model = build_model(cfg, "causal_lm", dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  count = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))
  assert count == 6_738_415_616  # Llama-2-7B's published parameter count
  attn = shapes["params"]["layers_31"]["attention"]
  assert attn["query"]["kernel"].shape == (4096, 32, 128)
  assert attn["out"]["kernel"].shape == (32, 128, 4096)


def test_export_then_transformers_reload_reproduces_our_logits(case, tmp_path):
  """Our (perturbed, so not just HF's own) weights survive save_pretrained ->
  transformers.from_pretrained."""
  name, hf, model, params = case
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  params = jax.tree_util.tree_unflatten(
      tree, [x + 0.01 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  jax_attnalign.save_pretrained(model, params, tmp_path)
  reloaded = type(hf).from_pretrained(tmp_path, attn_implementation="eager").eval()
  ids, mask = tiny_hf.batch(name)
  kwargs = {}
  if model.config.is_decoder:
    kwargs["position_ids"] = torch.tensor(tiny_hf.left_padded_positions(mask))
  with torch.no_grad():
    ref = reloaded(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs)
  out = model.apply({"params": params}, ids, mask)
  valid = mask.astype(bool)
  if model.task == "base":
    np.testing.assert_allclose(np.asarray(out.last_hidden_state)[valid],
                               ref.last_hidden_state.numpy()[valid], atol=TOL)
  else:
    logits, ref_logits = np.asarray(out.logits), ref.logits.numpy()
    if logits.ndim == 3:
      logits, ref_logits = logits[valid], ref_logits[valid]
    np.testing.assert_allclose(logits, ref_logits, atol=TOL)
