"""Head-wise optimizer against one Adam per head on per-head leaves."""

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_attnalign.analysis.safety import HeadClass
from jax_attnalign.defense.headwise import HeadRates, headwise_init, headwise_optimizer
from jax_attnalign.models import ModelConfig, build_model

CFG = ModelConfig(model_type="llama", vocab_size=31, hidden_size=24, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=6, intermediate_size=13,
                  attention_bias=True)
RATES = HeadRates(suspicious=1e-3, intermediate=5e-3, safe=2e-2)
AXES = {"query/kernel": 1, "key/kernel": 1, "value/kernel": 1, "query/bias": 0,
        "key/bias": 0, "value/bias": 0, "out/kernel": 0}


def _params():
  model = build_model(CFG, "causal_lm")
  return model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.int32))["params"]


def _reference(params, labels, steps, grad_fn, other_rate):
  """Splits every per-head leaf into one leaf per head, each with its own Adam."""
  group = CFG.num_heads // CFG.num_kv_heads  # kv head k serves query heads k*group..
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  leaves, rate_of = {}, {}
  for path, x in flat.items():
    proj = "/".join(path.split("/")[-2:])
    if "attention" in path and proj in AXES:
      layer = int(path.split("/")[0].split("_")[1])
      for h in range(x.shape[AXES[proj]]):
        leaves[f"{path}#{h}"] = jnp.take(x, h, axis=AXES[proj])
        served = labels[layer, h * group:(h + 1) * group] if proj.startswith(
            ("key", "value")) else labels[layer, h:h + 1]
        rate_of[f"{path}#{h}"] = min(RATES.of(c) for c in served)
    else:
      leaves[path], rate_of[path] = x, other_rate
  names = sorted(set(rate_of.values()))
  opt = optax.multi_transform({str(r): optax.adam(r) if r else optax.set_to_zero()
                               for r in names}, {k: str(r) for k, r in rate_of.items()})
  state = opt.init(leaves)

  def join(leaves):
    out = {}
    for path, x in flat.items():
      proj = "/".join(path.split("/")[-2:])
      if "attention" in path and proj in AXES:
        out[path] = jnp.stack([leaves[f"{path}#{h}"] for h in range(x.shape[AXES[proj]])],
                              axis=AXES[proj])
      else:
        out[path] = leaves[path]
    return flax.traverse_util.unflatten_dict(out, sep="/")

  def split(tree):
    f = flax.traverse_util.flatten_dict(tree, sep="/")
    return {k: (jnp.take(f[k.split("#")[0]], int(k.split("#")[1]),
                         axis=AXES["/".join(k.split("#")[0].split("/")[-2:])])
                if "#" in k else f[k]) for k in leaves}

  for step in range(steps):
    updates, state = opt.update(split(grad_fn(join(leaves), step)), state, leaves)
    leaves = optax.apply_updates(leaves, updates)
  return join(leaves)


def _grad_fn(params, step):
  return jax.tree_util.tree_map(lambda x: jnp.sin(3.0 * x + step) + 0.1 * x, params)


LABELS = np.array([[HeadClass.SUSPICIOUS, HeadClass.SAFE, HeadClass.INTERMEDIATE,
                    HeadClass.SAFE],
                   [HeadClass.SAFE, HeadClass.SAFE, HeadClass.INTERMEDIATE,
                    HeadClass.SUSPICIOUS]])


@pytest.mark.parametrize("other", ["moderate", "frozen"])
def test_equals_one_adam_per_head_over_20_steps(other):
  params = _params()
  opt = headwise_optimizer(params, other=other)
  state = headwise_init(opt, params, LABELS, CFG, RATES)
  ours = params
  for step in range(20):
    updates, state = opt.update(_grad_fn(ours, step), state, ours)
    ours = optax.apply_updates(ours, updates)
  ref = _reference(params, LABELS, 20, _grad_fn,
                   RATES.intermediate if other == "moderate" else 0.0)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), ours, ref)
  if other == "frozen":  # every parameter outside attention heads is bitwise unchanged
    for path, x in flax.traverse_util.flatten_dict(ours, sep="/").items():
      if "/".join(path.split("/")[-2:]) not in AXES or "attention" not in path:
        np.testing.assert_array_equal(x, flax.traverse_util.flatten_dict(params, sep="/")[path])


def test_zero_rate_heads_are_bitwise_frozen_and_gqa_is_conservative():
  params = _params()
  rates = HeadRates(suspicious=0.0, intermediate=1e-2, safe=1e-2)
  opt = headwise_optimizer(params)
  state = headwise_init(opt, params, LABELS, CFG, rates)
  new = params
  for step in range(5):
    updates, state = opt.update(_grad_fn(new, step), state, new)
    new = optax.apply_updates(new, updates)
  old_q = np.asarray(params["layers_0"]["attention"]["query"]["kernel"])
  new_q = np.asarray(new["layers_0"]["attention"]["query"]["kernel"])
  np.testing.assert_array_equal(new_q[:, 0], old_q[:, 0])  # suspicious head 0
  assert not np.array_equal(new_q[:, 1], old_q[:, 1])
  # Layer 0's kv head 0 serves query heads 0 (suspicious) and 1 (safe): frozen.
  for proj in ("key", "value"):
    old = np.asarray(params["layers_0"]["attention"][proj]["kernel"])
    now = np.asarray(new["layers_0"]["attention"][proj]["kernel"])
    np.testing.assert_array_equal(now[:, 0], old[:, 0])
    assert not np.array_equal(now[:, 1], old[:, 1])
  np.testing.assert_array_equal(new["layers_0"]["attention"]["out"]["kernel"][0],
                                params["layers_0"]["attention"]["out"]["kernel"][0])


def test_bad_labels_shape_is_a_clear_error():
  params = _params()
  with pytest.raises(ValueError, match=r"\[L, N\]"):
    headwise_init(headwise_optimizer(params), params, np.zeros((3, 4), int), CFG)


def test_one_transformation_serves_every_classification():
  """The rates are state: the same layout gets the same (cached) transformation,
  whose own init moves nothing until headwise_init sets the rates."""
  params = _params()
  opt = headwise_optimizer(params)
  assert headwise_optimizer(jax.tree_util.tree_map(np.zeros_like, params)) is opt
  assert headwise_optimizer(params, other="frozen") is not opt
  grads = _grad_fn(params, 0)
  updates, _ = opt.update(grads, opt.init(params), params)
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree_util.tree_leaves(updates))
  for labels in (LABELS, LABELS[::-1]):
    state = headwise_init(opt, params, labels, CFG, RATES)
    updates, _ = opt.update(grads, state, params)
    query = np.asarray(updates["layers_0"]["attention"]["query"]["kernel"])
    per_head = np.abs(query).max(axis=(0, 2))
    rates = np.array([RATES.of(c) for c in labels[0]])
    # Adam's first step is +-lr per element (up to eps): each head moves by its rate.
    np.testing.assert_allclose(per_head, rates, rtol=1e-3)
