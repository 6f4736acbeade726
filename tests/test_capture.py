"""Named intermediates (models.hooks) against transformers' torch forward and NumPy."""

import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tiny_hf
from jax_attnalign.models import (PATTERNS, SITES, Hooks, ModelConfig, attention_maps,
                                  build_model, hook_name, layer_of, run_with_hooks,
                                  scale_heads)

TOL = 1e-5  # f32, absolute


def _o_projs(hf):
  """Each layer's output projection (its input: the concatenated heads z)."""
  if hf.config.model_type == "bert":
    return [l.attention.output.dense for l in hf.base_model.encoder.layer]
  return [l.self_attn.o_proj for l in hf.base_model.layers]


def _mlp_outs(hf):
  """Each layer's MLP output projection (its input: the feed-forward activations)."""
  if hf.config.model_type == "bert":
    return [l.output.dense for l in hf.base_model.encoder.layer]
  return [l.mlp.down_proj for l in hf.base_model.layers]


def _torch_forward(hf, ids, mask, *, zero_head=None):
  """HF outputs with every o_proj's input and output; zero_head=(layer, head)
  zeroes that head's slice of the o_proj input."""
  cfg = hf.config
  head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
  seen = {"in": [], "out": [], "mlp_in": []}

  def pre_hook(layer):
    def fn(_, args):
      x = args[0]
      if zero_head is not None and zero_head[0] == layer:
        x = x.clone()
        x[..., zero_head[1] * head_dim:(zero_head[1] + 1) * head_dim] = 0.0
      seen["in"].append(x.numpy())
      return (x,)
    return fn

  handles = [p.register_forward_pre_hook(pre_hook(i)) for i, p in enumerate(_o_projs(hf))]
  handles += [p.register_forward_hook(lambda _, __, y: seen["out"].append(y.numpy()))
              for p in _o_projs(hf)]
  handles += [p.register_forward_pre_hook(lambda _, args: seen["mlp_in"].append(args[0].numpy()))
              for p in _mlp_outs(hf)]
  kwargs = {}
  if cfg.model_type != "bert":
    kwargs["position_ids"] = torch.tensor(tiny_hf.left_padded_positions(mask))
  try:
    with torch.no_grad():
      out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
               output_attentions=True, output_hidden_states=True, **kwargs)
  finally:
    for h in handles:
      h.remove()
  return out, seen


@pytest.fixture(scope="module", params=["bert", "llama", "mistral"])
def case(request, tmp_path_factory):
  """Everything captured ('*') on a tiny model, beside the torch reference."""
  hf, model, params = tiny_hf.make_and_load(request.param,
                                           tmp_path_factory.mktemp(request.param))
  ids, mask = tiny_hf.batch(request.param)
  batch = {"input_ids": ids, "attention_mask": mask}
  out, captured = run_with_hooks(model, params, batch, capture="*",
                                 output_hidden_states=True)
  ref, seen = _torch_forward(hf, ids, mask)
  return types.SimpleNamespace(hf=hf, model=model, params=params, batch=batch, out=out,
                               captured=captured, ref=ref, seen=seen,
                               valid=mask.astype(bool))


def test_every_site_of_every_layer_is_named_with_its_shape(case):
  cfg = case.model.config
  b, t = case.batch["input_ids"].shape
  assert set(case.captured) == {hook_name(l, s) for l in range(cfg.num_layers) for s in SITES}
  n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
  shapes = {"resid_pre": (b, t, d), "resid_post": (b, t, d), "attn.q": (b, t, n, h),
            "attn.k": (b, t, k, h), "attn.v": (b, t, k, h), "attn.pattern": (b, n, t, t),
            "attn.z": (b, t, n, h), "mlp.hidden": (b, t, cfg.intermediate_size)}
  for name, value in case.captured.items():
    assert value.shape == shapes[name.split(".", 2)[2]], name
    assert layer_of(name) == int(name.split(".")[1])


def test_pattern_equals_attention_maps_and_transformers(case):
  maps = np.asarray(attention_maps(case.captured))  # [L, B, N, T, S]
  only = run_with_hooks(case.model, case.params, case.batch, capture=PATTERNS)[1]
  np.testing.assert_array_equal(np.asarray(attention_maps(only)), maps)
  ref = np.stack([a.numpy() for a in case.ref.attentions])
  diff = np.abs(maps - ref).transpose(1, 3, 0, 2, 4)[case.valid]  # valid query rows
  assert diff.max() < TOL


def test_z_through_the_output_projection_is_the_attention_output(case):
  b, t = case.batch["input_ids"].shape
  for layer, (z_in, attn_out) in enumerate(zip(case.seen["in"], case.seen["out"])):
    z = np.asarray(case.captured[hook_name(layer, "attn.z")], np.float64)  # [B, T, N, H]
    np.testing.assert_allclose(z.reshape(b, t, -1)[case.valid], z_in[case.valid], atol=TOL)
    out = case.params[f"layers_{layer}"]["attention"]["out"]
    ours = np.einsum("btnh,nhd->btd", z, np.asarray(out["kernel"], np.float64))
    if "bias" in out:
      ours = ours + np.asarray(out["bias"])
    np.testing.assert_allclose(ours[case.valid], attn_out[case.valid], atol=TOL)


def test_mlp_hidden_is_the_input_of_the_mlp_output_projection(case):
  for layer, mlp_in in enumerate(case.seen["mlp_in"]):
    hidden = np.asarray(case.captured[hook_name(layer, "mlp.hidden")])  # [B, T, F]
    np.testing.assert_allclose(hidden[case.valid], mlp_in[case.valid], atol=TOL)


def test_queries_and_keys_give_the_pattern_back(case):
  """softmax(q k^T / sqrt(H) + mask) in NumPy float64, keys shared by each group."""
  cfg = case.model.config
  t = case.batch["input_ids"].shape[1]
  allowed = np.broadcast_to(case.valid[:, None, None, :], (len(case.valid), 1, t, t))
  q_pos, k_pos = np.arange(t)[:, None], np.arange(t)[None, :]
  if cfg.is_decoder:
    allowed = allowed & (k_pos <= q_pos)
  if cfg.sliding_window is not None:
    allowed = allowed & (k_pos > q_pos - cfg.sliding_window)
  for layer in range(cfg.num_layers):
    q = np.asarray(case.captured[hook_name(layer, "attn.q")], np.float64)
    k = np.asarray(case.captured[hook_name(layer, "attn.k")], np.float64)
    k = np.repeat(k, cfg.num_heads // cfg.num_kv_heads, axis=2)  # [B, S, N, H]
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(cfg.head_dim)
    logits = np.where(allowed, logits, np.finfo(np.float32).min)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = probs / probs.sum(-1, keepdims=True)
    pattern = np.asarray(case.captured[hook_name(layer, "attn.pattern")])
    diff = np.abs(pattern - probs).transpose(0, 2, 1, 3)[case.valid]
    assert diff.max() < TOL, layer


def test_residual_stream_chains_through_the_layers(case):
  cfg = case.model.config
  resid = lambda l, s: np.asarray(case.captured[hook_name(l, s)])
  hidden = [np.asarray(h) for h in case.out.hidden_states]
  np.testing.assert_array_equal(resid(0, "resid_pre"), hidden[0])
  for layer in range(cfg.num_layers - 1):
    np.testing.assert_array_equal(resid(layer, "resid_post"), resid(layer + 1, "resid_pre"))
    np.testing.assert_array_equal(resid(layer, "resid_post"), hidden[layer + 1])
  if not cfg.is_decoder:  # decoders report the last hidden state after the final norm
    np.testing.assert_array_equal(resid(cfg.num_layers - 1, "resid_post"), hidden[-1])


def test_zero_scaled_z_equals_zeroing_that_heads_o_proj_input(case):
  cfg = case.model.config
  layer, head = cfg.num_layers - 1, 1
  ref, seen = _torch_forward(case.hf, *case.batch.values(), zero_head=(layer, head))
  gates = jnp.ones((cfg.num_layers, cfg.num_heads)).at[layer, head].set(0.0)
  zero = lambda z, name: z.at[:, :, head].set(0.0)
  for edit in (scale_heads(gates), {hook_name(layer, "attn.z"): zero}):
    out, captured = run_with_hooks(case.model, case.params, case.batch, edit=edit,
                                   capture=f"layers.{layer}.attn.z")
    z = np.asarray(captured[hook_name(layer, "attn.z")])  # the edited value is captured
    assert not z[:, :, head].any()
    np.testing.assert_allclose(z.reshape(*z.shape[:2], -1)[case.valid],
                               seen["in"][layer][case.valid], atol=TOL)
    ours, theirs = np.asarray(out.last_hidden_state), ref.hidden_states[-1].numpy()
    np.testing.assert_allclose(ours[case.valid], theirs[case.valid], atol=TOL)


@pytest.mark.parametrize("spec", [
    "layers.1.*", re.compile(r"layers\.1\..+"), lambda name: layer_of(name) == 1,
    ["layers.1.attn.*", "layers.1.mlp.hidden", "layers.1.resid_pre",
     re.compile(r".*1\.resid_post")]],
    ids=["glob", "regex", "predicate", "list"])
def test_a_filter_for_one_layer_keeps_only_that_layer(case, spec):
  _, captured = run_with_hooks(case.model, case.params, case.batch, capture=spec)
  assert set(captured) == {hook_name(1, s) for s in SITES}
  for name, value in captured.items():
    np.testing.assert_array_equal(value, case.captured[name])


def test_one_captured_layer_costs_one_layer_of_maps():
  """XLA's compiled footprint of a deep model: capturing one layer's pattern holds
  that layer's maps and the working maps of the layer being run; capturing all
  holds every layer's."""
  t, heads, depth = 128, 4, 6
  layer_maps = heads * t * t * 4  # bytes of one layer's f32 maps, one sequence
  cfg = ModelConfig(model_type="llama", vocab_size=53, hidden_size=32, num_layers=depth,
                    num_heads=heads, intermediate_size=32)
  model = build_model(cfg, task="base")
  ids = jax.ShapeDtypeStruct((1, t), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]

  def footprint(capture):
    fn = lambda p, i, m: run_with_hooks(model, p, {"input_ids": i, "attention_mask": m},
                                        capture=capture)[1]
    mem = jax.jit(fn).lower(params, ids, ids).compile().memory_analysis()
    return mem.temp_size_in_bytes + mem.output_size_in_bytes

  one = footprint("layers.2.attn.pattern")
  assert one < 3 * layer_maps
  assert footprint(PATTERNS) > one + (depth - 2) * layer_maps


def test_hooks_refuse_ambiguous_or_malformed_specs(case):
  run = lambda **kw: run_with_hooks(case.model, case.params, case.batch, **kw)
  with pytest.raises(ValueError, match="more than one"):
    run(capture=PATTERNS, summarize={"layers.0.attn.pattern": lambda x, _: x.sum()})
  with pytest.raises(TypeError, match="filter"):
    run(capture=3)
  with pytest.raises(ValueError, match="matched no hook name"):
    run(capture="layers.0.attn.patern")
  with pytest.raises(ValueError, match="Unknown hook site"):
    hook_name(0, "attention_probs")
  with pytest.raises(ValueError, match="No attention patterns captured"):
    attention_maps(run(capture="layers.*.attn.z")[1])
  assert Hooks().scope("layers.3").scope("attn").prefix == "layers.3.attn."
