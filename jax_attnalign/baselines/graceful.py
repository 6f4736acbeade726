"""GraCeFul: filtering backdoor samples out of a generative LLM's training set by
their gradients in the frequency domain (Wu, Cheng, Fang, Zhang and Liu 2025,
"Gracefully Filtering Backdoor Samples for Generative Large Language Models
without Retraining", COLING 2025), as its released code (github.com/ZrW00/GraCeFul,
openbackdoor/defenders/graceful_defender.py) does it.

  keep, report = graceful_filter(model, params, arrays, GraCeFulConfig(),
                                 poisoned=truth)  # truth: for the report only
  clean_rows = {k: v[keep] for k, v in arrays.items()}  # then fine-tune on these

The rule, for every row of the (possibly poisoned) training set:
  1. the gradient of the row's causal-LM loss (mean next-token cross-entropy
     over its response tokens and EOS, as in training) with respect to one
     parameter block, the LM head W [V, D] by default (the repo's
     `targetPara="lm_head.weight"`), every other parameter held constant;
  2. its 2-D DCT-II, unnormalised (torch_dct's `dct_2d`, scipy's `norm=None`:
     X_k = 2 sum_n x_n cos(pi k (2n + 1) / 2N) along each axis); for the LM head
     only the lowest eighth of the frequencies on each axis is kept
     ([V // 8, D // 8]; other blocks keep all), flattened;
  3. PCA of the rows to `pca_dims` (32, the reproduced paper's h_i) principal
     scores, each then standardised to mean 0 and variance 1 (the repo's
     StandardScaler);
  4. agglomerative clustering into two clusters, cosine distance, average
     linkage; the larger cluster is kept and the other is flagged as poisoned
     (on a tie, the one with the smaller scipy node id, i.e. formed first,
     which is the one sklearn's labels in the repo flag).
The defender then fine-tunes the victim's starting point on the kept rows with
the victim's own recipe (the harness does that; this module returns the filter).

Which parameters: the repo computes the gradients on the model the victim is
fine-tuned *from* (the pre-trained LLM, before any training on the suspect set:
"without retraining" means no poisoned reference model is trained first). Pass
those parameters. On the tests' tiny backdoor, a model fine-tuned for 30 steps
on the poisoned set serves as well, but one fine-tuned until it has learnt the
backdoor (120 steps) does not: the poisoned rows' loss is then small, and the
filter cuts off clean rows instead.

Memory: one row's LM-head gradient for SmolLM2-135M is 49152 x 576 floats
(113 MB). The gradients of a batch (`batch_size` rows, vmap of jax.grad) exist
only inside one jitted call, which returns their cropped DCT (6144 x 72 = 442k
floats a row): the DCT along the hidden axis is a matrix product with the
cropped DCT basis (cheap for the short axis), along the vocabulary axis an FFT
(`jax.scipy.fft.dct`). 400 rows hold 0.7 GB of features; PCA works on their
n x n Gram matrix, built in float64 column chunks. Time goes to the forward
passes: about 1 s a row of 128 tokens on two busy CPU cores, 2.3 GB peak at
batch_size 8 (measured on SmolLM2-135M).

What differs from the repo:
  * PCA is exact (eigendecomposition of the centred Gram matrix) where the repo
    calls the randomised `torch.pca_lowrank(q=32)`; a component of (numerically)
    zero variance is left near 0 instead of being scaled up to unit variance.
  * Tied embeddings (SmolLM2): the LM head is the embedding matrix, and we take
    the gradient of its use as the output projection only (transformers' tied
    `lm_head.weight` would also collect the input lookup's gradient); the
    repo's models (Llama-2, Vicuna) have a separate `lm_head`. The DCT runs on W in the
    transformers layout [V, D] either way.
  * The rows are batched (the repo: one row per backward pass); a per-row
    gradient is the same. The repo's model is in train mode, which for a Llama
    with LoRA dropout 0 computes the same as our deterministic forward.
  * The repo's UMAP plots and F1 scores are not made; the report counts the
    removed rows, and the removed poisoned and clean rows when the truth is given.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.cluster.hierarchy
import tqdm
from flax import traverse_util

from jax_attnalign import train, validation
from jax_attnalign.defense import checks
from jax_attnalign.errors import InputError
from jax_attnalign.models import apply_batch

Array = jax.Array
LM_HEAD = "lm_head"
LM_HEAD_KEEP = 8  # the LM head keeps the lowest 1/8 of the frequencies on each axis (the repo)
LINKAGES = ("average", "complete", "single", "weighted")  # those defined for cosine distance
_FIELDS = ("input_ids", "attention_mask", "loss_mask")


@dataclasses.dataclass(frozen=True)
class GraCeFulConfig:
  """block: the parameter whose per-row gradient is clustered: "lm_head" (the
  output projection, tied or not; the repo's default) or the '/'-path of a 2-D
  parameter (e.g. "layers_29/mlp/down/kernel"); pca_dims: the principal
  components kept (32, the paper's); linkage: of the cosine-distance
  agglomerative clustering (average, the repo's); batch_size: rows per jitted
  gradient call (memory: batch_size x the block's size x ~2 floats).

  >>> GraCeFulConfig().pca_dims, GraCeFulConfig().block, GraCeFulConfig().linkage
  (32, 'lm_head', 'average')
  """
  block: str = LM_HEAD
  pca_dims: int = 32
  linkage: str = "average"
  batch_size: int = 8

  def __post_init__(self):
    checks.at_least("GraCeFulConfig.pca_dims", self.pca_dims, 1)
    checks.choice("GraCeFulConfig.linkage", self.linkage, LINKAGES)
    checks.at_least("GraCeFulConfig.batch_size", self.batch_size, 1)


def dct_matrix(n: int, keep: int) -> np.ndarray:
  """The unnormalised DCT-II basis, its first `keep` frequencies: [keep, n]
  float32, C[k, i] = 2 cos(pi k (2i + 1) / 2n) (scipy.fft.dct's norm=None)."""
  k, i = np.arange(keep)[:, None], np.arange(n)[None, :]
  return (2 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))).astype(np.float32)


def dct_features(grads: Array, keep_rows: int, keep_cols: int) -> Array:
  """The 2-D DCT-II of each matrix, its lowest [keep_rows, keep_cols]
  frequencies, flattened: grads [B, R, C] -> [B, keep_rows * keep_cols].

  >>> g = jnp.ones((1, 4, 2))  # a constant: only the (0, 0) frequency, 2 * 2 * 8
  >>> dct_features(g, 2, 2).tolist()
  [[32.0, 0.0, 0.0, 0.0]]
  """
  basis = jnp.asarray(dct_matrix(grads.shape[2], keep_cols))  # [c, C]
  x = jnp.einsum("brc,kc->brk", grads, basis, precision=jax.lax.Precision.HIGHEST)
  x = jax.scipy.fft.dct(x, axis=1)[:, :keep_rows]  # [B, r, c]
  return x.reshape(x.shape[0], -1)


def _head_weight(model, params) -> Array:
  """The output projection in the transformers layout [V, D]."""
  if model.config.tie_word_embeddings:
    return params["embed_tokens"]["embedding"]
  return params["lm_head"]["kernel"].T


def _lm_head_grads(model, params, batch: dict[str, Array]) -> Array:
  """Per row, d loss / d W of the output projection W [V, D], the hidden states
  fixed: [B, V, D]."""
  b = batch["input_ids"].shape[0]
  # The model's own logits are not used: one position keeps their cost negligible.
  out = apply_batch(model, params, batch, logit_positions=jnp.zeros((b, 1), jnp.int32))
  hidden = jnp.take_along_axis(out.last_hidden_state, batch["loss_positions"][..., None],
                               axis=1).astype(jnp.float32)  # [B, P, D]

  def loss(w, h, ids, positions):
    logits = h @ w.T  # [P, V]
    row = {"input_ids": ids[None], "loss_positions": positions[None]}
    return train.causal_lm_loss(logits[None], row)[0]

  w = _head_weight(model, params).astype(jnp.float32)
  return jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, 0))(
      w, hidden, batch["input_ids"], batch["loss_positions"])


def _block_grads(model, params, batch: dict[str, Array], block: str) -> Array:
  """Per row, d loss / d params[block] through the whole model: [B, *shape]."""
  flat = traverse_util.flatten_dict(params, sep="/")

  def loss(w, row):
    one = {k: v[None] for k, v in row.items()}
    return train.loss_and_metrics(model, traverse_util.unflatten_dict({**flat, block: w}, "/"),
                                  one, jax.random.key(0), "causal_lm", True)[0]

  return jax.vmap(jax.grad(loss), in_axes=(None, 0))(flat[block], batch)


@functools.partial(jax.jit, static_argnames=("model", "block"))
def per_sample_gradients(model, params, batch: dict[str, Array], block: str = LM_HEAD) -> Array:
  """One batch's per-row gradients of the causal-LM loss with respect to `block`
  alone (vmap of jax.grad): [B, V, D] for the LM head, else the block's shape.

  batch: input_ids, attention_mask, loss_positions [B, P] (`train.with_loss_positions`).
  """
  if block == LM_HEAD:
    return _lm_head_grads(model, params, batch)
  return _block_grads(model, params, batch, block).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("model", "block", "keep"))
def _features_batch(model, params, batch, block: str, keep: tuple[int, int]) -> Array:
  return dct_features(per_sample_gradients(model, params, batch, block), *keep)


def _feature_shape(model, params, block: str) -> tuple[int, int]:
  """(rows, columns) of the block's kept DCT frequencies; checks the block."""
  cfg = model.config
  if block == LM_HEAD:
    if model.task != "causal_lm":
      raise InputError(f"GraCeFul's block 'lm_head' needs a causal_lm model, got task "
                       f"{model.task!r}; build it with task='causal_lm'.")
    return cfg.vocab_size // LM_HEAD_KEEP, cfg.hidden_size // LM_HEAD_KEEP
  flat = traverse_util.flatten_dict(params, sep="/")
  if block not in flat or np.ndim(flat[block]) != 2:
    found = sorted(k for k, v in flat.items() if np.ndim(v) == 2)
    raise InputError(f"GraCeFulConfig.block={block!r} is not a 2-D parameter of the model; "
                     f"use {LM_HEAD!r} or one of {found[:6]}{' ...' if len(found) > 6 else ''}.")
  return tuple(np.shape(flat[block]))


def gradient_features(model, params, arrays: dict[str, np.ndarray],
                      config: GraCeFulConfig = GraCeFulConfig()) -> np.ndarray:
  """Steps 1-2 of the module docstring: every row's block gradient, DCT, its
  low frequencies: [n, F] float32. The last batch is filled with copies of its
  first row, so one shape is compiled for the whole set."""
  keep = _feature_shape(model, params, config.block)
  rows = train.with_loss_positions({k: np.asarray(arrays[k]) for k in _FIELDS})
  rows.pop("loss_mask")
  n, size = len(rows["input_ids"]), config.batch_size
  out = []
  for start in tqdm.trange(0, n, size, desc="GraCeFul: per-row gradients", leave=False):
    take = np.arange(start, start + size)
    take[take >= n] = start
    batch = {k: v[take] for k, v in rows.items()}
    out.append(np.asarray(_features_batch(model, params, batch, config.block, keep))
               [:min(size, n - start)])
  return np.concatenate(out)


def pca_embedding(features: np.ndarray, dims: int, chunk: int = 16384) -> np.ndarray:
  """Step 3: the rows' first `dims` principal scores, each standardised (mean 0,
  variance 1): features [n, F] -> [n, dims] float64. Needs dims < n and
  dims <= F. The Gram matrix is accumulated over `chunk` columns at a time.

  >>> x = np.random.default_rng(0).normal(size=(10, 6))
  >>> z = pca_embedding(x, 3)
  >>> z.shape, np.allclose(z.mean(0), 0), np.allclose(z.std(0), 1)
  ((10, 3), True, True)
  """
  n, width = features.shape
  if not 0 < dims < n or dims > width:
    raise InputError(f"GraCeFul's PCA to {dims} dimensions needs more rows than that and at "
                     f"least as many features; got {n} rows of {width} features. Pass at "
                     f"least {dims + 1} rows or lower GraCeFulConfig.pca_dims.")
  mean = features.mean(0, dtype=np.float64)
  gram = np.zeros((n, n))
  for start in range(0, width, chunk):
    part = features[:, start:start + chunk].astype(np.float64) - mean[start:start + chunk]
    gram += part @ part.T
  values, vectors = np.linalg.eigh(gram)  # ascending
  values, vectors = values[::-1][:dims], vectors[:, ::-1][:, :dims]
  scores = vectors * np.sqrt(np.maximum(values, 0.0))  # = centred features @ components
  std = scores.std(0)
  std[std <= 1e-6 * std.max()] = 1.0  # a zero-variance component stays ~0
  return (scores - scores.mean(0)) / std


def minority_cluster(embedding: np.ndarray, linkage: str = "average") -> np.ndarray:
  """Step 4: cut the cosine-distance agglomerative tree into its two last-merged
  clusters and flag the smaller one (on a tie, the one merged first): [n] bool.

  >>> pts = np.array([[1, 0.1], [1, -0.1], [1, 0.0], [-1, 0.2], [1, 0.05]])
  >>> minority_cluster(pts).tolist()
  [False, False, False, True, False]
  """
  tree = scipy.cluster.hierarchy.linkage(embedding, method=linkage, metric="cosine")
  root = scipy.cluster.hierarchy.to_tree(tree)
  first, second = sorted((root.get_left(), root.get_right()), key=lambda c: c.id)
  flagged = first if first.get_count() <= second.get_count() else second
  out = np.zeros(len(embedding), bool)
  out[flagged.pre_order()] = True
  return out


def _check_rows(model, arrays, config: GraCeFulConfig, poisoned) -> int:
  if not isinstance(arrays, dict) or any(k not in arrays for k in _FIELDS):
    raise InputError(f"graceful_filter needs the training rows as a dict with {_FIELDS} "
                     "(data.encode_prompt_response).")
  n = len(arrays["input_ids"])
  if n == 0:
    raise InputError("graceful_filter got an empty training set; pass the rows to filter.")
  validation.batch_inputs(model.config, arrays, where="graceful_filter")
  silent = np.flatnonzero(np.asarray(arrays["loss_mask"])[:, 1:].sum(1) == 0)
  if len(silent):
    raise InputError(f"graceful_filter: rows {silent[:8].tolist()} have no response token "
                     "in loss_mask[:, 1:], so no gradient; drop them or encode them with "
                     "data.encode_prompt_response.")
  if config.pca_dims >= n:
    raise InputError(f"GraCeFulConfig.pca_dims={config.pca_dims} needs more than that many "
                     f"rows, got {n}; pass more rows or lower pca_dims.")
  if poisoned is not None and np.shape(poisoned) != (n,):
    raise InputError(f"graceful_filter: poisoned has shape {np.shape(poisoned)}, expected "
                     f"({n},): one flag per training row.")
  return n


def graceful_filter(model, params, arrays: dict[str, np.ndarray],
                    config: GraCeFulConfig = GraCeFulConfig(), *,
                    poisoned: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
  """GraCeFul's filter of the training rows (module docstring).

  arrays: input_ids, attention_mask, loss_mask [n, T] (data.encode_prompt_response);
  params: the model the victim is fine-tuned from (the paper's protocol).
  poisoned: [n] bool, the rows' true flags, only counted in the report.
  Returns (keep [n] bool, report): rows, removed, kept, the feature width, and
  with `poisoned` the poisoned and clean rows and how many of each were removed.

  Example, the interface on a tiny random Llama (whose random hidden states
  carry no backdoor; tests/test_graceful.py filters a trained one):
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-llama"))
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 16), jnp.int32))["params"]
    >>> ids = np.random.default_rng(0).integers(3, 64, (40, 16))
    >>> loss_mask = np.zeros_like(ids); loss_mask[:, 8:] = 1  # the response: tokens 8-15
    >>> rows = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": loss_mask}
    >>> keep, report = graceful_filter(model, params, rows, GraCeFulConfig(pca_dims=4),
    ...                                poisoned=np.arange(40) < 4)
    >>> keep.shape, report["features"], report["kept"] + report["removed"]  # 8 x 2 frequencies
    ((40,), 16, 40)
  """
  n = _check_rows(model, arrays, config, poisoned)
  rows, cols = _feature_shape(model, params, config.block)
  if config.pca_dims > rows * cols:
    raise InputError(f"GraCeFulConfig.pca_dims={config.pca_dims} exceeds the {rows * cols} "
                     f"DCT features of block {config.block!r}; lower pca_dims.")
  features = gradient_features(model, params, arrays, config)
  features = validation.finite_values(
      "GraCeFul's gradient features", features,
      fix="the model's loss is not finite on these rows; check the parameters")
  flagged = minority_cluster(pca_embedding(features, config.pca_dims), config.linkage)
  report = {"rows": n, "removed": int(flagged.sum()), "kept": int(n - flagged.sum()),
            "block": config.block, "features": int(features.shape[1])}
  if poisoned is not None:
    truth = np.asarray(poisoned, bool)
    report.update(poisoned_rows=int(truth.sum()), clean_rows=int(n - truth.sum()),
                  poisoned_removed=int((flagged & truth).sum()),
                  clean_removed=int((flagged & ~truth).sum()))
  return ~flagged, report
