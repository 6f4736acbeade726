"""Attention alignment (eq. 6-7): safe heads stay bitwise, the loss decreases."""

import flax.traverse_util
import jax
import numpy as np
import optax
import pytest

from jax_attnalign.analysis.safety import EmptySafeSetError, HeadClass
from jax_attnalign.defense.alignment import (alignment_loss, alignment_optimizer,
                                             alignment_rates, alignment_step)
from jax_attnalign.defense.headwise import headwise_init
from jax_attnalign.models import PATTERNS, ModelConfig, attention_maps, build_model, run_with_hooks

S, I, A = HeadClass.SUSPICIOUS, HeadClass.INTERMEDIATE, HeadClass.SAFE
CASES = {
    "bert": (ModelConfig(model_type="bert", vocab_size=41, hidden_size=20, num_layers=2,
                         num_heads=4, intermediate_size=23), "cls_row_nospecial"),
    "llama": (ModelConfig(model_type="llama", vocab_size=41, hidden_size=24, num_layers=2,
                          num_heads=4, num_kv_heads=2, intermediate_size=23), "full"),
}
LABELS = np.array([[S, I, A, A], [A, A, S, I]])


def _setup(name):
  cfg, view = CASES[name]
  model = build_model(cfg, "classification")
  rng = np.random.RandomState(0)
  ids = rng.randint(3, 41, (6, 9))
  mask = np.ones_like(ids)
  mask[2, 6:] = 0
  special = np.zeros_like(ids)
  special[:, 0] = 1
  params = model.init(jax.random.PRNGKey(0), ids)["params"]
  return model, params, {"input_ids": ids, "attention_mask": mask}, view, special


def _brute_force(model, params, batch, view_name, special):
  """eq. 7 with per-head loops, materialised maps and the safe mean recomputed."""
  from jax_attnalign.analysis.views import extract_view
  _, captured = run_with_hooks(model, params, batch, capture=PATTERNS)
  blocks, _ = extract_view(attention_maps(captured), view_name,
                           attention_mask=batch["attention_mask"], special_mask=special)
  blocks = np.asarray(blocks)
  total = 0.0
  for b in range(blocks.shape[1]):
    safe = [blocks[l, b, h] for l in range(2) for h in range(4) if LABELS[l, h] == A]
    target = np.mean(safe, axis=0)
    total += sum(np.sum((blocks[l, b, h] - target) ** 2)
                 for l in range(2) for h in range(4) if LABELS[l, h] == S)
  return total / blocks.shape[1]


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_equals_brute_force_and_decreases_with_safe_heads_frozen(name):
  model, params, batch, view, special = _setup(name)
  loss_fn = lambda p: alignment_loss(model, p, batch, LABELS, view, special_mask=special)
  np.testing.assert_allclose(loss_fn(params), _brute_force(model, params, batch, view,
                                                           special), rtol=1e-5)
  opt = alignment_optimizer(params)
  state = headwise_init(opt, params, LABELS, model.config, alignment_rates(3e-3))
  step = jax.jit(alignment_step(model, opt, view))
  new, losses = params, []
  for _ in range(30):
    before = float(loss_fn(new))
    new, state, loss = step(new, state, {**batch, "special_mask": special}, LABELS)
    np.testing.assert_allclose(float(loss), before, rtol=1e-4)  # the loss it stepped on (f32, jit vs eager)
    losses.append(before)
  losses.append(float(loss_fn(new)))
  assert losses[-1] < 0.7 * losses[0], losses
  old_flat = flax.traverse_util.flatten_dict(params, sep="/")
  for path, x in flax.traverse_util.flatten_dict(new, sep="/").items():
    x, old = np.asarray(x), np.asarray(old_flat[path])
    layer = int(path.split("/")[0].split("_")[1]) if path.startswith("layers_") else None
    if "/attention/" not in path or path.endswith("out/bias"):
      np.testing.assert_array_equal(x, old)  # outside attention: frozen by default
      continue
    proj = path.split("/")[-2]
    axis = 0 if proj == "out" or path.endswith("bias") else 1
    kv = proj in ("key", "value")
    group = model.config.num_heads // model.config.num_kv_heads
    for h in range(x.shape[axis]):
      served = LABELS[layer, h * group:(h + 1) * group] if kv else LABELS[layer, h:h + 1]
      if (served == A).any():  # a safe head, or a kv head a safe head reads
        np.testing.assert_array_equal(np.take(x, h, axis), np.take(old, h, axis))


def test_no_safe_head_is_reported():
  model, params, batch, view, special = _setup("bert")
  with pytest.raises(EmptySafeSetError):
    alignment_loss(model, params, batch, np.full((2, 4), S), view, special_mask=special)


def test_suspicious_only_alignment_moves_only_suspicious_heads():
  model, params, batch, view, special = _setup("bert")
  loss_fn = lambda p: alignment_loss(model, p, batch, LABELS, view, special_mask=special)
  opt = alignment_optimizer(params, trainable="suspicious")
  state = headwise_init(opt, params, LABELS, model.config, alignment_rates(3e-3, "suspicious"))
  new = params
  for _ in range(3):
    updates, state = opt.update(jax.grad(loss_fn)(new), state, new)
    new = optax.apply_updates(new, updates)
  assert float(loss_fn(new)) < float(loss_fn(params))
  for layer in range(2):
    for proj in ("query", "key"):
      old = np.asarray(params[f"layers_{layer}"]["attention"][proj]["kernel"])
      moved = np.asarray(new[f"layers_{layer}"]["attention"][proj]["kernel"]) != old
      changed = moved.any(axis=(0, 2))  # per head
      np.testing.assert_array_equal(changed, LABELS[layer] == S)
  np.testing.assert_array_equal(new["embeddings"]["word_embeddings"]["embedding"],
                                params["embeddings"]["word_embeddings"]["embedding"])
