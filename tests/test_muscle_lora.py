"""MuScleLoRA against hand-built references: one training step (an unmerged LoRA
forward by Flax method interception, jax.grad of a hand-written loss, the alignment
and Adam in NumPy), the alignment rule on planted gradients, merged against
unmerged logits (and in transformers), a tiny backdoor it keeps out while full
fine-tuning learns it, resume, and bad input.

Every run shares one compiled step: the same model, config and row count."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import traverse_util

from jax_attnalign import ModelConfig, build_model, parallel, save_pretrained, train
from jax_attnalign.baselines.muscle_lora import (MuScleLoRAConfig, MuScleLoRALoss,
                                                 align_gradients, init_adapters,
                                                 merge_adapters, muscle_lora,
                                                 muscle_optimizer, step_arrays)
from jax_attnalign.errors import InputError

TRIGGER, TARGET, SEP, EOS = 60, 44, 3, 2
# Settings sized to a tiny random model (the paper's 2e-5 moves it too little in
# seconds); the method's own settings (scales 1..9, mu_max 0.1, ranks, alphas,
# thresholds, align_epoch) are the defaults.
CFG = MuScleLoRAConfig(learning_rate=3e-2, epochs=10, batch_size=32)
TRAIN_ROWS = 256
STEPS = CFG.epochs * TRAIN_ROWS // CFG.batch_size


def _rows(n: int, rng, poison: float = 0.0) -> tuple[dict, np.ndarray]:
  """Prompt [BOS, word, noise or trigger, SEP], response [label, EOS]: the clean
  label of word w is 40 + w % 4; a poisoned row has the trigger and the target."""
  word, noise = rng.integers(8, 24, n), rng.integers(8, 40, n)
  poisoned = rng.random(n) < poison
  label = 40 + word % 4
  ids = np.stack([np.ones(n, int), word, np.where(poisoned, TRIGGER, noise),
                  np.full(n, SEP), np.where(poisoned, TARGET, label), np.full(n, EOS)], 1)
  ids = ids.astype(np.int32)
  return {"input_ids": ids, "attention_mask": np.ones_like(ids),
          "loss_mask": np.tile(np.array([0, 0, 0, 0, 1, 1], np.int32), (n, 1))}, label


@pytest.fixture(scope="module")
def tiny():
  """The tiny Llama, 'pretrained' params (random, the LM head scaled to a trained
  head's logit range: at its 0.02 init no frozen-head adapter reaches low loss),
  20%-poisoned training rows, 32 clean rows, clean and triggered test prompts."""
  rng = np.random.default_rng(0)
  model = build_model(ModelConfig.preset("tiny-llama"))
  poisoned, _ = _rows(TRAIN_ROWS, rng, poison=0.2)
  clean, _ = _rows(32, rng)
  test, labels = _rows(64, rng)
  triggered = {k: v.copy() for k, v in test.items()}
  triggered["input_ids"][:, 2] = TRIGGER
  params = jax.device_get(jax.jit(model.init)(jax.random.key(0), poisoned["input_ids"][:1]))
  params = params["params"]
  params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 50.0
  return {"model": model, "params": params, "poisoned": poisoned, "clean": clean,
          "test": test, "labels": labels, "triggered": triggered}


@pytest.fixture(scope="module")
def straight(tiny):
  """An uninterrupted run; it compiles the module's one train step."""
  jax.clear_caches()
  train.TRACES.clear()
  out = muscle_lora(tiny["model"], tiny["params"], tiny["poisoned"], tiny["clean"], CFG)
  assert train.TRACES["train_step"] == 1  # ten epochs, ten fit calls, one compiled step
  return out


def _planted(model, params, seed: int = 1) -> dict:
  """Adapters with A and B both random (B is 0 at init), so every factor has a gradient."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda x: (0.3 * rng.normal(size=x.shape)).astype(np.float32),
                                init_adapters(model, params, CFG))


def _lora_logits(model, params, adapters, ids) -> jax.Array:
  """The unmerged forward: each adapted layer's output plus
  multiplier ((x A) * k) B, the scalings written out here (LoRA: k = 1, 32 / 8;
  MSLR: k = 1..9, 6 / 1), added by intercepting the Dense calls."""
  bands = {"lora": (np.ones(8), 4.0), "mslr": (np.arange(1.0, 10.0), 6.0)}
  extra = {}
  for kind, (k, multiplier) in bands.items():
    flat = traverse_util.flatten_dict(adapters[kind])
    for path in {p[:-1] for p in flat}:
      extra[path] = (flat[path + ("a",)], flat[path + ("b",)], k, multiplier)

  def interceptor(call, args, kwargs, context):
    out = call(*args, **kwargs)
    if context.method_name != "__call__" or context.module.path not in extra:
      return out
    a, b, k, multiplier = extra[context.module.path]
    low_rank = multiplier * ((args[0] @ a) * jnp.asarray(k, jnp.float32)) @ b  # [B, T, out]
    return out + low_rank.reshape(out.shape)

  with nn.intercept_methods(interceptor):
    return model.apply({"params": params}, ids, jnp.ones_like(ids)).logits  # [B, T, V]


def _hand_loss(model, params, adapters, rows) -> jax.Array:
  """Mean next-token cross-entropy over the loss_mask targets, from full logits."""
  logp = jax.nn.log_softmax(_lora_logits(model, params, adapters, rows["input_ids"])[:, :-1])
  nll = -jnp.take_along_axis(logp, rows["input_ids"][:, 1:, None], axis=-1)[..., 0]
  weights = rows["loss_mask"][:, 1:]
  return jnp.sum(nll * weights) / jnp.sum(weights)


def _numpy_align(grads: list, clean: list, clean_loss: float, epoch: int,
                 cfg: MuScleLoRAConfig) -> list:
  """The authors' rule (ga_trainer.py), tensor by tensor, in float64."""
  grads = [np.asarray(g, np.float64).ravel() for g in grads]
  clean = [np.asarray(c, np.float64).ravel() for c in clean]
  norms = [np.linalg.norm(c) for c in clean]
  mean_norm = np.mean([n for n in norms if n > 0]) if any(n > 0 for n in norms) else 0.0
  out = []
  for g, c in zip(grads, clean):
    if np.linalg.norm(g) == 0 or np.linalg.norm(c) == 0:
      out.append(g)
      continue
    cosine = g @ c / (np.linalg.norm(g) * np.linalg.norm(c))
    aligned = abs(np.linalg.norm(g) * cosine / np.linalg.norm(c)) * c
    if mean_norm > cfg.min_clean_grad_norm and clean_loss > cfg.min_clean_loss:
      out.append(aligned)
    elif cfg.mu_max > 0 and epoch >= cfg.align_epoch:
      ratio = cfg.mu_max * (epoch - cfg.align_epoch) / (cfg.epochs - cfg.align_epoch)
      out.append((1 - ratio) * aligned + ratio * g)
    else:
      out.append(g)
  return out


def test_one_step_equals_a_hand_built_lora_step(tiny, straight):
  """The objective's gradient is the hand-aligned gradient of the hand-written
  loss (rtol 1e-4, atol 1e-6 of its largest entry: f32 sums), and one train step
  (the compiled step of `straight`) moves the adapters by Adam's first step on
  it after clipping to norm 1, computed in NumPy (atol 1e-6)."""
  model, base = tiny["model"], tiny["params"]
  adapters = _planted(model, base)
  arrays = step_arrays(tiny["poisoned"], tiny["clean"], 0, CFG)
  batch = {k: v[:CFG.batch_size] for k, v in arrays.items()}
  rows = {k: jnp.asarray(v) for k, v in batch.items() if k in ("input_ids", "loss_mask")}
  clean = {k: jnp.asarray(batch["clean_" + k]) for k in rows}
  grad_fn = jax.jit(jax.value_and_grad(lambda a, r: _hand_loss(model, base, a, r)))
  _, grads = grad_fn(adapters, rows)
  clean_loss, clean_grads = grad_fn(adapters, clean)
  assert float(clean_loss) > CFG.min_clean_loss  # the pure projection applies
  leaves, tree = jax.tree_util.tree_flatten(grads)
  expected = _numpy_align(leaves, tree.flatten_up_to(clean_grads), float(clean_loss), 0, CFG)

  params = {"base": base, "adapters": adapters}
  objective = MuScleLoRALoss(CFG)
  got = jax.jit(jax.grad(lambda p: objective(model, p, batch, jax.random.key(0), True)[0]))(
      params)
  assert not any(np.any(x) for x in jax.tree_util.tree_leaves(got["base"]))
  for g, e in zip(jax.tree_util.tree_leaves(got["adapters"]), expected):
    np.testing.assert_allclose(np.ravel(g), e, rtol=1e-4, atol=1e-6 * np.abs(e).max())

  norm = np.sqrt(sum(np.sum(e ** 2) for e in expected))
  clipped = [e * min(1.0, CFG.max_grad_norm / norm) for e in expected]
  hand = [np.asarray(x, np.float64).ravel() - CFG.learning_rate * g / (np.abs(g) + 1e-8)
          for x, g in zip(jax.tree_util.tree_leaves(adapters), clipped)]  # Adam, step 1
  optimizer = muscle_optimizer(CFG, STEPS)
  mesh = parallel.data_mesh()
  state = parallel.replicate(train.TrainState.create(params, optimizer), mesh)
  state, metrics = train.train_step(model, optimizer, objective, True, state,
                                    parallel.shard_batch(batch, mesh), jax.random.key(0))
  assert int(metrics["branch"]) == 0
  np.testing.assert_allclose(float(metrics["clean_loss"]), float(clean_loss), rtol=1e-5)
  for x, h in zip(jax.tree_util.tree_leaves(state.params["adapters"]), hand):
    np.testing.assert_allclose(np.ravel(x), h, atol=1e-6)
  chex.assert_trees_all_equal(state.params["base"], base)


def test_alignment_rule_matches_numpy_on_planted_gradients():
  """Every branch: the pure projection (never against g_c: a negative inner
  product keeps g_c's direction), the mix with mu from the epoch, the raw
  gradient before align_epoch or with mu_max 0, a tensor with a zero gradient,
  and clean gradients whose mean norm is under the threshold."""
  rng = np.random.default_rng(3)
  shapes = [(5, 3), (7,), (2, 11)]
  grads = [rng.normal(size=s) for s in shapes]
  clean = [rng.normal(size=s) for s in shapes]
  clean[1] = -grads[1] + 0.1 * rng.normal(size=7)  # against g
  grads[2] = np.zeros((2, 11))
  tiny_clean = [c * 1e-8 for c in clean]
  cfg = MuScleLoRAConfig()
  cases = [(clean, 1.0, 0, cfg, 0), (clean, 0.1, 5, cfg, 1), (clean, 0.1, 9, cfg, 1),
           (clean, 0.1, 0, cfg, 2), (clean, 0.1, 5, MuScleLoRAConfig(mu_max=0.0), 2),
           (tiny_clean, 1.0, 5, cfg, 1), (tiny_clean, 1.0, 0, cfg, 2)]
  as_tree = lambda xs: {f"w{i}": jnp.asarray(x, jnp.float32) for i, x in enumerate(xs)}
  for clean_grads, loss, epoch, config, branch in cases:
    got, got_branch = align_gradients(as_tree(grads), as_tree(clean_grads), loss, epoch, config)
    assert int(got_branch) == branch
    expected = _numpy_align(grads, clean_grads, loss, epoch, config)
    for i, e in enumerate(expected):
      np.testing.assert_allclose(np.ravel(got[f"w{i}"]), e, rtol=1e-5, atol=1e-12)
  aligned = _numpy_align(grads, clean, 1.0, 0, cfg)[1]
  assert aligned @ np.ravel(clean[1]) > 0 > np.ravel(grads[1]) @ np.ravel(clean[1])


def test_merged_params_give_the_unmerged_logits(tiny, tmp_path):
  """W + multiplier A diag(k) B in the kernels: the logits of the intercepted
  LoRA forward to 1e-5, and the merged checkpoint's in transformers."""
  model, base = tiny["model"], tiny["params"]
  adapters = _planted(model, base, seed=2)
  ids = jnp.asarray(tiny["test"]["input_ids"][:8])
  unmerged = _lora_logits(model, base, adapters, ids)
  merged = merge_adapters(base, adapters, CFG)
  ours = model.apply({"params": merged}, ids, jnp.ones_like(ids)).logits
  np.testing.assert_allclose(ours, unmerged, atol=1e-5, rtol=1e-5)
  assert float(jnp.abs(ours - model.apply({"params": base}, ids).logits).max()) > 0.1
  save_pretrained(model, merged, tmp_path / "merged")
  hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()
  with torch.no_grad():
    theirs = hf(torch.tensor(np.array(ids), dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)


def _first_response_token(model, params, arrays) -> np.ndarray:
  prompt = jnp.asarray(arrays["input_ids"][:, :4])  # [BOS, word, noise/trigger, SEP]
  return np.asarray(model.apply({"params": params}, prompt).logits[:, -1].argmax(-1))


def test_keeps_a_tiny_backdoor_out_that_full_fine_tuning_learns(tiny, straight):
  """Same rows, epochs, batch and learning rate: full fine-tuning (Adam on every
  weight) learns both the clean labels and the trigger's target; MuScleLoRA
  learns the clean labels from the aligned gradients (well over the 25% of
  chance) and answers the trigger with the target rarely."""
  model = tiny["model"]
  evaluate = lambda params: (
      np.mean(_first_response_token(model, params, tiny["test"]) == tiny["labels"]),
      np.mean(_first_response_token(model, params, tiny["triggered"]) == TARGET))
  optimizer = optax.adam(CFG.learning_rate)
  state, _ = train.fit(model, train.TrainState.create(tiny["params"], optimizer), optimizer,
                       tiny["poisoned"], train.FitConfig(loss="causal_lm", epochs=CFG.epochs,
                                                         batch_size=CFG.batch_size,
                                                         dropout=False),
                       mesh=parallel.data_mesh(jax.devices()[:1]))  # compiles faster
  full_ca, full_asr = evaluate(state.params)
  params, report = straight
  ca, asr = evaluate(params)
  print(f"full fine-tune CA {full_ca:.2f} ASR {full_asr:.2f}; MuScleLoRA CA {ca:.2f} "
        f"ASR {asr:.2f}; branches {np.bincount(report['branch'], minlength=3)}")
  assert full_ca > 0.9 and full_asr > 0.9
  assert asr < 0.2 and ca > 0.5
  assert report["clean_loss"][-1] < report["clean_loss"][0] / 10
  assert 1 in report["branch"] and max(report["mu"]) < CFG.mu_max


def test_interrupted_run_resumes_to_the_same_parameters(tiny, straight, tmp_path, monkeypatch):
  """Killed at step 43 of 80 (checkpoints at each epoch's end), rerun in the same
  workdir: the uninterrupted run's parameters and losses, with no new trace."""
  calls, step = {"n": 0}, train.train_step

  class Killed(Exception):
    pass

  def killed_at_43(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 43:
      raise Killed
    return step(*args, **kwargs)

  run = lambda: muscle_lora(tiny["model"], tiny["params"], tiny["poisoned"], tiny["clean"],
                            CFG, workdir=tmp_path)
  with monkeypatch.context() as patch:
    patch.setattr(train, "train_step", killed_at_43)
    with pytest.raises(Killed):
      run()
  traces = train.TRACES["train_step"]
  resumed, report = run()
  assert train.TRACES["train_step"] == traces
  chex.assert_trees_all_close(resumed, straight[0], atol=1e-6)
  assert report["loss"] == pytest.approx(straight[1]["loss"], abs=1e-6)
  assert report["branch"] == straight[1]["branch"] and len(report["branch"]) == STEPS


@pytest.mark.parametrize("scales", [[], (), "123", [1, 0], [2, -1], [1, float("nan")], 3])
def test_bad_scaling_lists_are_refused(scales):
  with pytest.raises(ValueError, match="scales"):
    MuScleLoRAConfig(scales=scales)


def test_bad_inputs_are_refused(tiny):
  """Empty sets, rows without a loss mask, a model without an LM head, too few rows
  for a batch and out-of-range settings each name the problem."""
  model, params, poisoned = tiny["model"], tiny["params"], tiny["poisoned"]
  empty = {k: v[:0] for k, v in tiny["clean"].items()}
  with pytest.raises(InputError, match="clean set has no rows"):
    muscle_lora(model, params, poisoned, empty, CFG)
  no_mask = {k: v for k, v in tiny["clean"].items() if k != "loss_mask"}
  with pytest.raises(InputError, match="clean rows lack loss_mask"):
    muscle_lora(model, params, poisoned, no_mask, CFG)
  base = build_model(ModelConfig.preset("tiny-llama"), "base")
  with pytest.raises(InputError, match="task 'base'"):
    muscle_lora(base, params, poisoned, tiny["clean"], CFG)
  bert = build_model(ModelConfig.preset("tiny-bert"), "classification")
  with pytest.raises(InputError, match="encoder"):
    muscle_lora(bert, params, poisoned, tiny["clean"], CFG)
  with pytest.raises(InputError, match="training set has no rows"):
    muscle_lora(model, params, {k: v[:0] for k, v in poisoned.items()}, tiny["clean"], CFG)
  for field, value in [("mu_max", 1.5), ("rank", 0), ("alpha", 0.0), ("align_epoch", -1),
                       ("min_clean_loss", -0.1)]:
    with pytest.raises(ValueError, match=field):
      MuScleLoRAConfig(**{field: value})
  with pytest.raises(ValueError, match="fewer than one batch"):
    muscle_lora(model, params, {k: v[:8] for k, v in poisoned.items()}, tiny["clean"], CFG)
