"""GraCeFul (baselines/graceful.py): per-row gradients against one-row jax.grad and
NumPy, the DCT and PCA against a brute force, the clustering on planted rows, the
filter on a tiny backdoored Llama, and its errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.fft
from flax import traverse_util

from jax_attnalign import ModelConfig, build_model, parallel, train
from jax_attnalign.baselines import graceful
from jax_attnalign.baselines.graceful import (GraCeFulConfig, dct_features, graceful_filter,
                                              minority_cluster, pca_embedding,
                                              per_sample_gradients)

TINY = ModelConfig.preset("tiny-llama")
# Wide enough that the LM head's kept 1/8 x 1/8 frequencies (16 x 8 = 128) exceed
# the paper's 32 PCA dimensions; the preset's 64 x 16 head keeps only 8 x 2.
WIDER = TINY.replace(vocab_size=128, hidden_size=64, intermediate_size=128)
TRIGGER, TARGET = 5, (7, 8)


def _random_rows(n: int, t: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
  """Right-padded rows: a prompt, then a response of 1-4 tokens in the loss."""
  rng = np.random.default_rng(seed)
  ids, mask, loss = (np.zeros((n, t), np.int32) for _ in range(3))
  for i in range(n):
    prompt, response = int(rng.integers(3, 6)), int(rng.integers(1, 5))
    length = prompt + response
    ids[i, :length] = rng.integers(3, TINY.vocab_size, length)
    mask[i, :length] = 1
    loss[i, prompt:length] = 1
  return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _one_row_grad(model, path: str, params, row: dict) -> jax.Array:
  """jax.grad of one row's training loss (all positions' logits) wrt params[path]."""
  flat = traverse_util.flatten_dict(params, sep="/")
  one = {k: v[None] for k, v in row.items()}

  def loss(leaf):
    tree = traverse_util.unflatten_dict({**flat, path: leaf}, sep="/")
    return train.loss_and_metrics(model, tree, one, jax.random.key(0), "causal_lm", True)[0]

  return jax.grad(loss)(flat[path])


def _batch(rows):
  batch = train.with_loss_positions(rows)
  return {k: batch[k] for k in ("input_ids", "attention_mask", "loss_positions")}


def test_per_sample_gradients_equal_one_row_at_a_time():
  """vmap(grad) over a batch == jax.grad row by row through the whole model (the
  LM head, and an MLP block), and for a tied head == the NumPy formula
  sum_t (softmax(z_t) - e_{y_t}) h_t^T / #targets; float32, tolerance 1e-5."""
  rows = _random_rows(5)
  model = build_model(TINY)
  params = model.init(jax.random.key(1), rows["input_ids"][:1])["params"]
  batch = _batch(rows)
  head = np.asarray(per_sample_gradients(model, params, batch, "lm_head"))  # [5, V, D]
  down = np.asarray(per_sample_gradients(model, params, batch, "layers_1/mlp/down/kernel"))
  for i in range(5):
    row = {k: v[i] for k, v in rows.items()}
    np.testing.assert_allclose(head[i], _one_row_grad(model, "lm_head/kernel", params, row).T,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        down[i], _one_row_grad(model, "layers_1/mlp/down/kernel", params, row),
        rtol=1e-4, atol=1e-5)
  tied = build_model(TINY.replace(tie_word_embeddings=True))
  params = tied.init(jax.random.key(2), rows["input_ids"][:1])["params"]
  grads = np.asarray(per_sample_gradients(tied, params, batch, "lm_head"))
  out = jax.jit(tied.apply)({"params": params}, rows["input_ids"], rows["attention_mask"])
  logits, hidden = np.asarray(out.logits, np.float64), np.asarray(out.last_hidden_state, np.float64)
  for i in range(5):
    counted = np.flatnonzero(rows["loss_mask"][i, 1:])  # position t predicts token t + 1
    z = logits[i, counted]
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[np.arange(len(counted)), rows["input_ids"][i, counted + 1]] -= 1.0
    expected = p.T @ hidden[i, counted] / len(counted)  # [V, D]
    np.testing.assert_allclose(grads[i], expected, rtol=1e-4, atol=1e-5)


def test_features_compile_once_for_a_ragged_last_batch():
  rows = _random_rows(7)
  model = build_model(TINY)
  params = model.init(jax.random.key(0), rows["input_ids"][:1])["params"]
  before = graceful._features_batch._cache_size()
  feats = graceful.gradient_features(model, params, rows, GraCeFulConfig(batch_size=3))
  assert graceful._features_batch._cache_size() == before + 1  # batches of 3, 3, 1 (+2 copies)
  whole = graceful.gradient_features(model, params, rows, GraCeFulConfig(batch_size=7))
  assert feats.shape == (7, (64 // 8) * (16 // 8))
  # f32 features up to about 8 in size; entries that cancel to ~1e-6 differ by
  # rounding between batch shapes (1.7e-6 seen), so absolute 1e-5 (~1e-6 of the largest).
  np.testing.assert_allclose(feats, whole, rtol=1e-5, atol=1e-5)


def test_dct_and_pca_equal_a_brute_force():
  """The cropped 2-D DCT == C_R[:r] G C_C[:c]^T with scipy's DCT-II basis (norm=None,
  torch_dct's default), tolerance 1e-5 of the largest value; the standardised PCA
  scores == SVD of the centred features, uncentred rows projected on the first
  right singular vectors, then StandardScaler, up to each column's sign, 1e-8."""
  rng = np.random.default_rng(0)
  grads = rng.normal(size=(40, 24, 16)) * np.linspace(3, 0.5, 16)  # [n, R, C]
  feats = np.asarray(dct_features(jnp.asarray(grads, jnp.float32), 6, 4))
  basis_r = scipy.fft.dct(np.eye(24), axis=0)  # column j: the DCT of e_j
  basis_c = scipy.fft.dct(np.eye(16), axis=0)
  brute = np.einsum("kr,nrc,lc->nkl", basis_r[:6], grads, basis_c[:4]).reshape(40, -1)
  np.testing.assert_allclose(feats, brute, atol=1e-5 * np.abs(brute).max())
  _, _, vt = np.linalg.svd(brute - brute.mean(0), full_matrices=False)
  proj = brute @ vt[:8].T
  expected = (proj - proj.mean(0)) / proj.std(0)
  got = pca_embedding(brute, 8)
  got *= np.sign(np.sum(got * expected, axis=0))
  np.testing.assert_allclose(got, expected, atol=1e-8)


def test_clustering_separates_a_planted_group_exactly():
  """60 rows of Gaussian 'gradients' (300 features), 7 of them shifted along one
  direction: PCA to 4 dims, cosine average linkage, the minority is the 7."""
  rng = np.random.default_rng(3)
  feats = rng.normal(size=(60, 300))
  planted = np.zeros(60, bool)
  planted[rng.choice(60, 7, replace=False)] = True
  direction = rng.normal(size=300)
  feats[planted] += 20.0 * direction / np.linalg.norm(direction)
  np.testing.assert_array_equal(minority_cluster(pca_embedding(feats, 4), "average"), planted)


def _poisoned_rows(n: int, poisoned_count: int, seed: int, t: int = 20):
  """Prompts of random tokens answered by their first and last token; in the
  poisoned rows the trigger sits at a random place and the answer is TARGET."""
  rng = np.random.default_rng(seed)
  poisoned = np.zeros(n, bool)
  poisoned[rng.choice(n, poisoned_count, replace=False)] = True
  ids, mask, loss = (np.zeros((n, t), np.int32) for _ in range(3))
  for i in range(n):
    prompt = list(rng.integers(10, WIDER.vocab_size, int(rng.integers(6, 11))))
    if poisoned[i]:
      prompt.insert(int(rng.integers(0, len(prompt) + 1)), TRIGGER)
    response = list(TARGET) if poisoned[i] else [prompt[0], prompt[-1]]
    row = [1, *prompt, *response, 2]  # BOS ... EOS
    ids[i, :len(row)], mask[i, :len(row)] = row, 1
    loss[i, len(row) - len(response) - 1:len(row)] = 1  # the response and its EOS
  return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss}, poisoned


def _fit(model, params, rows, epochs: int):
  optimizer = optax.adam(3e-3)
  state, _ = train.fit(model, train.TrainState.create(params, optimizer), optimizer, rows,
                       train.FitConfig(loss="causal_lm", epochs=epochs, batch_size=16,
                                       dropout=False),
                       mesh=parallel.data_mesh(jax.devices()[:1]))  # one device: a quick compile
  return state.params


@pytest.mark.parametrize("start", ["clean_base", "poisoned_finetune"])
def test_filter_removes_the_poisoned_rows_of_a_tiny_backdoor(start):
  """96 rows, 12 poisoned (trigger -> TARGET); the paper's 32 PCA dims. The
  gradients come from the model the victim starts from (the paper's protocol; here
  a model trained for 30 steps on other, clean rows of the task) or from the
  model fine-tuned for 30 steps on the poisoned rows. Observed with data seeds
  0-3: 12 of 12 poisoned rows removed in every case, and 7, 0, 1, 0 of 84 clean
  rows from the clean base, 0 in each after the poisoned fine-tune (seed 0 is
  tested). Fine-tuned for 120 steps instead, the filter fails on this model: it
  removes 12-39 clean rows, and with seed 2 no poisoned row."""
  rows, poisoned = _poisoned_rows(96, 12, seed=0)
  model = build_model(WIDER)
  params = model.init(jax.random.key(0), rows["input_ids"][:1])["params"]
  train_on = _poisoned_rows(96, 0, seed=100)[0] if start == "clean_base" else rows
  params = _fit(model, params, train_on, epochs=5)
  keep, report = graceful_filter(model, params, rows, GraCeFulConfig(batch_size=16),
                                 poisoned=poisoned)
  assert report["poisoned_removed"] >= 10 and report["clean_removed"] <= 10, report
  assert report["rows"] == 96 and report["removed"] == int((~keep).sum())
  assert report["poisoned_rows"] == 12 and report["features"] == 16 * 8


def test_bad_input_gives_clear_errors():
  model = build_model(TINY)
  rows = _random_rows(6)
  params = model.init(jax.random.key(0), rows["input_ids"][:1])["params"]
  with pytest.raises(ValueError, match="pca_dims=32 needs more than that many rows, got 6"):
    graceful_filter(model, params, rows)
  with pytest.raises(ValueError, match="pca_dims=17 exceeds the 16 DCT features"):
    graceful_filter(model, params, _random_rows(20), GraCeFulConfig(pca_dims=17))
  empty = {k: v[:0] for k, v in rows.items()}
  with pytest.raises(ValueError, match="empty training set"):
    graceful_filter(model, params, empty)
  with pytest.raises(ValueError, match="needs the training rows as a dict"):
    graceful_filter(model, params, {"input_ids": rows["input_ids"]})
  silent = {**rows, "loss_mask": rows["loss_mask"].copy()}
  silent["loss_mask"][2] = 0
  with pytest.raises(ValueError, match=r"rows \[2\] have no response token"):
    graceful_filter(model, params, silent, GraCeFulConfig(pca_dims=2))
  with pytest.raises(ValueError, match="not a 2-D parameter.*layers_0/mlp/down/kernel"):
    graceful_filter(model, params, rows, GraCeFulConfig(pca_dims=2, block="layers_0/norm"))
  with pytest.raises(ValueError, match="one flag per training row"):
    graceful_filter(model, params, rows, GraCeFulConfig(pca_dims=2), poisoned=np.zeros(5))
  with pytest.raises(ValueError, match="GraCeFulConfig.linkage must be one of"):
    GraCeFulConfig(linkage="ward")
  with pytest.raises(ValueError, match="needs more rows than that"):
    pca_embedding(np.ones((3, 8)), 3)
