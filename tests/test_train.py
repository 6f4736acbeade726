"""The jitted data-parallel training loop: losses, learning, resume, one vs 8 devices."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_attnalign import parallel
from jax_attnalign.models import ModelConfig, build_model
from jax_attnalign.train import (FitConfig, TrainState, causal_lm_loss, fit,
                                 loss_and_metrics, predict_logits, trim_padding,
                                 with_loss_positions)

BERT = ModelConfig(model_type="bert", vocab_size=53, hidden_size=20, num_layers=2,
                   num_heads=4, intermediate_size=23, max_position_embeddings=16,
                   hidden_dropout=0.1, attention_dropout=0.1)
LLAMA = ModelConfig(model_type="llama", vocab_size=53, hidden_size=24, num_layers=2,
                    num_heads=4, num_kv_heads=2, intermediate_size=23)


def _toy_classification(n=64, length=11, seed=0):
  """Label 1 iff token 7 occurs: a backdoor-like rule a small model learns fast."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(8, 53, (n, length)).astype(np.int32)
  labels = rng.randint(0, 2, n).astype(np.int32)
  ids[labels == 1, rng.randint(1, length, (labels == 1).sum())] = 7
  return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}


def _state(model, optimizer, data):
  params = model.init(jax.random.PRNGKey(0), data["input_ids"][:2])["params"]
  return TrainState.create(params, optimizer)


def test_classification_fit_learns_and_predicts():
  model = build_model(BERT, "classification")
  data = _toy_classification()
  optimizer = optax.adam(3e-3)
  state, history = fit(model, _state(model, optimizer, data), optimizer, data,
                       FitConfig(epochs=12, batch_size=16, log_every=10))
  assert len(history) == 12 * 4
  assert np.mean([h["loss"] for h in history[-4:]]) < 0.5 * history[0]["loss"]
  logits = predict_logits(model, state.params, data, batch_size=24)  # a ragged last batch
  assert logits.shape == (64, 2)
  assert np.mean(logits.argmax(-1) == data["labels"]) > 0.9


def test_causal_lm_loss_counts_only_masked_targets():
  rng = np.random.RandomState(0)
  logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
  ids = rng.randint(0, 7, (2, 5))
  loss_mask = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
  value, _ = causal_lm_loss(logits, {"input_ids": ids, "loss_mask": loss_mask})
  logp = np.asarray(jax.nn.log_softmax(logits))
  terms = [-logp[b, t - 1, ids[b, t]] for b in range(2) for t in range(1, 5) if loss_mask[b, t]]
  np.testing.assert_allclose(value, np.mean(terms), rtol=1e-6)


def test_logits_where_the_loss_is_give_the_same_loss_and_gradient():
  """The LM head at the loss positions only (`with_loss_positions`): same loss,
  token accuracy and gradient as full logits, for uneven masks and a row
  without any loss token."""
  model = build_model(LLAMA, "causal_lm")
  rng = np.random.RandomState(2)
  ids = rng.randint(0, 53, (4, 13)).astype(np.int32)
  loss_mask = np.zeros_like(ids)
  loss_mask[0, 9:], loss_mask[1, 3:6], loss_mask[2, [4, 8, 12]] = 1, 1, 1  # row 3: none
  batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": loss_mask}
  sparse = with_loss_positions(batch, bucket=3)
  np.testing.assert_array_equal(sparse["loss_positions"],
                                [[8, 9, 10, 11, 12, 12], [2, 3, 4, 12, 12, 12],
                                 [3, 7, 11, 12, 12, 12], [12, 12, 12, 12, 12, 12]])
  params = model.init(jax.random.PRNGKey(0), ids[:1])["params"]
  fn = jax.jit(jax.value_and_grad(lambda p, b: loss_and_metrics(
      model, p, b, jax.random.key(0), "causal_lm", True), has_aux=True))
  (loss, metrics), grads = fn(params, batch)
  (sparse_loss, sparse_metrics), sparse_grads = fn(params, sparse)
  np.testing.assert_allclose(sparse_loss, loss, rtol=1e-6)
  np.testing.assert_allclose(sparse_metrics["token_accuracy"], metrics["token_accuracy"])
  chex.assert_trees_all_close(sparse_grads, grads, atol=1e-6)
  assert model.apply({"params": params}, ids, logit_positions=sparse["loss_positions"]
                     ).logits.shape == (4, 6, 53)


def test_interrupted_fit_resumes_to_the_same_parameters(tmp_path):
  model = build_model(LLAMA, "causal_lm")
  rng = np.random.RandomState(1)
  ids = rng.randint(0, 53, (48, 9)).astype(np.int32)
  data = {"input_ids": ids, "attention_mask": np.ones_like(ids),
          "loss_mask": (np.arange(9) >= 4).astype(np.int32)[None].repeat(48, 0)}
  optimizer = optax.adamw(1e-3)
  cfg = FitConfig(loss="causal_lm", epochs=3, batch_size=8, checkpoint_every=4)
  straight, _ = fit(model, _state(model, optimizer, data), optimizer, data, cfg)
  # "Interrupt" after 1 epoch and 2 steps, then resume from the checkpoint (step 8).
  first = FitConfig(**{**cfg.__dict__, "epochs": 1})
  fit(model, _state(model, optimizer, data), optimizer, data, first, workdir=tmp_path)
  resumed, history = fit(model, _state(model, optimizer, data), optimizer, data, cfg,
                         workdir=tmp_path)
  assert int(resumed.step) == 18 and len(history) == 18
  chex.assert_trees_all_close(resumed.params, straight.params, atol=1e-6)


@pytest.mark.parametrize("parallelism", ["mesh", "pmap"])
@pytest.mark.parametrize("loss", ["classification", "causal_lm"])
def test_eight_devices_equal_one(loss, parallelism):
  """10 steps on 8 devices (a mesh, or pmap) = 10 steps on one device, within 1e-5."""
  model = build_model(BERT if loss == "classification" else LLAMA,
                      "classification" if loss == "classification" else "causal_lm")
  data = _toy_classification(n=32)
  # Uneven answer masks: pmap must weight each device's mean by its token count.
  data["loss_mask"] = (np.random.RandomState(3).rand(32, 11) < 0.5).astype(np.int32)
  optimizer = optax.adam(1e-3)
  cfg = FitConfig(loss=loss, epochs=5, batch_size=16, dropout=False)
  one, one_history = fit(model, _state(model, optimizer, data), optimizer, data, cfg,
                         mesh=parallel.data_mesh(jax.devices()[:1]))
  cfg.parallelism = parallelism
  eight, history = fit(model, _state(model, optimizer, data), optimizer, data, cfg,
                       mesh=parallel.data_mesh())
  assert jax.device_count() == 8 and len(history) == 10
  np.testing.assert_allclose([h["loss"] for h in history],
                             [h["loss"] for h in one_history], rtol=1e-5)
  chex.assert_trees_all_close(jax.device_get(one.params), jax.device_get(eight.params),
                              atol=1e-5)
  assert not np.allclose(jax.device_get(one.params["layers_0"]["attention"]["query"]["kernel"]),
                         jax.device_get(_state(model, optimizer, data).params["layers_0"]
                                        ["attention"]["query"]["kernel"]), atol=1e-4)


def test_length_buckets_do_not_change_predictions():
  model = build_model(BERT, "classification")
  data = _toy_classification(n=24, length=16)
  data["attention_mask"][:, 9:] = 0  # right padding: only 9 real tokens per row
  data["input_ids"][:, 9:] = 0
  assert trim_padding(data, 4)["input_ids"].shape == (24, 12)
  params = model.init(jax.random.PRNGKey(0), data["input_ids"][:2])["params"]
  full = predict_logits(model, params, data, batch_size=8)
  bucketed = predict_logits(model, params, data, batch_size=8, length_bucket=4)
  np.testing.assert_allclose(bucketed, full, atol=1e-5)
