"""PURE: head pruning and attention normalisation (Zhao, Xu and Yuan 2024, "Defense
against Backdoor Attack on Pre-trained Language Models via Head Pruning and
Attention Normalization"), as its released code (github.com/xingyizhao/PURE) does it.

  params, report = pure(model, params, clean_train, clean_val, PUREConfig(),
                        workdir="runs/pure")

The rule:
  1. rank the heads by the variance of their [CLS] attention row on the clean
     validation rows: per row, the (unbiased) variance of A[l, h][0, :] over every
     key slot of the padded row (padding slots hold 0, as in PURE's fixed-length
     batches), averaged over rows;
  2. prune the lowest-variance heads in groups of `prune_step` (10) in that order,
     never a layer's highest-variance head (one head per layer stays); at the
     first group under the accuracy threshold c (0.85) restore its heads one at a
     time, highest variance first, until the accuracy is back at c, and stop;
  3. fine-tune on the clean training rows with cross-entropy plus the attention
     normalisation penalty (PURE's eq. 3, `AttentionNormalizedLoss`):
       lambda * sum_l w_l * sum_{h kept} sqrt(sum_{b, s} A[l, h][b, 0, s]^2)
     per batch, lambda = 0.15; w_l from the pruned model's mean [CLS]-row variance
     v_l of layer l's kept heads: w = softmax(-log v) = (1/v) / sum(1/v), then
     min-max scaled over layers (the least varying layer gets 1, the most 0).
Pruned heads are zeroed in the weights (`pruning.zero_heads`) and frozen during
the fine-tune, so the saved checkpoint is pruned for transformers too. A decoder
classifier (a Llama with task='classification', e.g. a chat classifier read off
its label words) reads its class at its last real token, so there that token's
row stands for the [CLS] row, in the ranking and in the penalty.

Settings from PURE's code (its config.py): c = 0.85 is an *absolute* validation
accuracy (`accuracy_val < threshold`, threshold 0.85), not 85% of the original's;
prune_step 10; penalty 0.15. `threshold="relative"` reads c as a fraction of
the unpruned model's accuracy instead (at MiniLM scale SST-2 victims sit near
0.85, where the absolute reading can leave nothing to prune).

What differs: PURE first fine-tunes its poisoned *pre-trained* model on clean
data; our victims are already fine-tuned classifiers, so that step is skipped.
Its variance row leaves out the padded row's last key slot (`[0:max_len-1]` of
the flattened map); ours takes the whole row. Its fine-tune is AdamW 2e-5 with
linear decay and clipping for 3 epochs on ~60k SST-2 rows; ours is
`CleanFineTuning`'s. Its pruned heads are removed (transformers'
`prune_heads`); ours are zeroed, which computes the same.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jax_attnalign import train
from jax_attnalign.baselines import pruning
from jax_attnalign.baselines.finetune import BaselineConfig, finetune_on_clean, stored_decision
from jax_attnalign.defense import checks
from jax_attnalign.models import PATTERNS, last_token_slots, layer_of, run_with_hooks

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class PUREConfig(BaselineConfig):
  """PURE's released settings: c = 0.85 (absolute), groups of 10 heads, penalty 0.15.

  >>> PUREConfig().accuracy_threshold, PUREConfig(threshold="relative").threshold
  (0.85, 'relative')
  """
  accuracy_threshold: float = 0.85
  threshold: Literal["absolute", "relative"] = "absolute"
  prune_step: int = 10
  penalty: float = 0.15

  def __post_init__(self):
    super().__post_init__()
    checks.in_range("PUREConfig.accuracy_threshold", self.accuracy_threshold, 0.0, 1.0)
    checks.choice("PUREConfig.threshold", self.threshold, ("absolute", "relative"))
    checks.at_least("PUREConfig.prune_step", self.prune_step, 1)
    checks.rate("PUREConfig.penalty", self.penalty)


def _pooled_rows(model, pattern: Array, attention_mask: Array) -> Array:
  """The attention rows [B, N, S] of the token the classifier reads: [CLS] (query 0)
  for an encoder, the last real token for a decoder."""
  if not model.config.is_decoder:
    return pattern[:, :, 0, :]
  last = last_token_slots(attention_mask)[:, None, None, None]
  return jnp.take_along_axis(pattern, last, axis=2)[:, :, 0]


@dataclasses.dataclass(frozen=True)
class AttentionNormalizedLoss:
  """PURE's eq. 3 as a `train.Objective`: cross-entropy + `penalty` * sum over
  layers and heads of weights[l][h] * ||[CLS] rows of head (l, h) over the batch||_2.

  weights: [L][N] (0 for pruned heads); tuples, so the objective is hashable and
  the compiled step is reused for every batch.

  >>> AttentionNormalizedLoss(weights=((1.0, 0.0),), penalty=0.15).penalty
  0.15
  """
  weights: tuple[tuple[float, ...], ...]
  penalty: float

  def __call__(self, model, params, batch, rng, deterministic):
    def square_sums(pattern, name):  # over the batch and key slots of A[b, h, pooled, s]^2: [N]
      del name
      return jnp.sum(jnp.square(_pooled_rows(model, pattern, batch["attention_mask"])),
                     axis=(0, 2))

    out, norms = run_with_hooks(model, params, batch, summarize={PATTERNS: square_sums},
                                deterministic=deterministic, rngs={"dropout": rng})
    norms = jnp.stack([norms[n] for n in sorted(norms, key=layer_of)])  # [L, N]
    penalty = self.penalty * jnp.sum(jnp.asarray(self.weights) * jnp.sqrt(norms))
    ce, metrics = train.classification_loss(out.logits, batch)
    return ce + penalty, {"loss": ce + penalty, "attention_penalty": penalty, **metrics}


@functools.partial(jax.jit, static_argnames=("model",))
def _cls_row_variances(model, params, batch):
  """Per row, each head's unbiased variance of its [CLS] attention row: [B, L, N]."""
  _, var = run_with_hooks(model, params, batch, summarize={
      PATTERNS: lambda p, name: jnp.var(_pooled_rows(model, p, batch["attention_mask"]),
                                        axis=-1, ddof=1)})
  return jnp.stack([var[n] for n in sorted(var, key=layer_of)], axis=1)


def _head_variances(model, params, arrays: dict[str, np.ndarray], batch_size: int
                    ) -> np.ndarray:
  """Each head's [CLS]-row variance, averaged over the rows of `arrays`: [L, N]."""
  return pruning.per_row(_cls_row_variances, model, params, arrays, batch_size,
                         bucket=None).mean(0)  # over the padded row, as PURE


def _layer_weights(variance: np.ndarray, keep: np.ndarray) -> np.ndarray:
  """PURE's normalisation coefficients per layer [L] from the pruned model's head
  variances [L, N] and the kept heads: softmax(-log v_l), min-max scaled."""
  v = (variance * keep).sum(1) / keep.sum(1)
  w = (1.0 / v) / np.sum(1.0 / v)
  spread = w.max() - w.min()
  return (w - w.min()) / spread if spread > 0 else np.ones_like(w)


def _pruning_groups(variance: np.ndarray, prune_step: int) -> list[list[int]]:
  """Flat head indices (l * N + n) in increasing variance, `prune_step` a group,
  each layer's highest-variance head left out (PURE keeps one head per layer)."""
  order = np.lexsort((np.arange(variance.size), variance.ravel()))
  kept = set(np.ravel_multi_index((np.arange(len(variance)), variance.argmax(1)),
                                  variance.shape).tolist())
  return [[int(i) for i in order[s:s + prune_step] if i not in kept]
          for s in range(0, len(order), prune_step)]


def pure(model, params, clean_train: dict[str, np.ndarray], clean_val: dict[str, np.ndarray],
         config: PUREConfig = PUREConfig(), *,
         workdir: str | pathlib.Path | None = None) -> tuple[dict, dict]:
  """PURE with the defender's clean labelled rows: `clean_val` ranks the heads,
  bounds the pruning and sets the penalty's weights; `clean_train` fine-tunes
  (module docstring).

  Returns (params, report): report has the validation accuracy, the threshold,
  the pruned heads per layer, the trace of every evaluation, the layer weights
  and the fine-tune's loss. With `workdir` the decision (pruning.json) and the
  fine-tune's checkpoints are kept there, and an interrupted run resumes.

  Example, a tiny random BERT (2 layers x 4 heads) and c relative:
    >>> from jax_attnalign import ModelConfig, baselines, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = np.random.RandomState(0).randint(3, 64, (16, 6))
    >>> clean = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids[:, 1] % 2}
    >>> params = model.init(jax.random.key(0), ids[:2])["params"]
    >>> config = PUREConfig(threshold="relative", prune_step=2,
    ...                     finetune=baselines.CleanFineTuning(epochs=1, batch_size=8))
    >>> params, report = pure(model, params, clean, clean, config)
    >>> [len(heads) < 4 for heads in report["pruned_heads"]]  # one head per layer stays
    [True, True]
  """
  workdir = pathlib.Path(workdir) if workdir else None
  cfg = model.config
  shape = (cfg.num_layers, cfg.num_heads)

  def decide() -> dict:
    variance = _head_variances(model, params, clean_val, config.batch_size)
    accuracy = pruning.pruned_accuracy(model, params, clean_val, batch_size=config.batch_size)
    threshold = config.accuracy_threshold * (accuracy if config.threshold == "relative"
                                             else 1.0)
    logging.info("PURE: validation accuracy %.4f, threshold %.4f.", accuracy, threshold)
    pruned, trace = pruning.prune_in_steps(
        _pruning_groups(variance, config.prune_step),
        lambda mask: pruning.pruned_accuracy(model, params, clean_val,
                                     keep_heads=~mask.reshape(shape),
                                     batch_size=config.batch_size),
        threshold, variance.size, backtrack=True)
    keep = (~pruned.reshape(shape)).astype(np.float32)
    pruned_variance = _head_variances(model, pruning.zero_heads(params, keep), clean_val,
                                      config.batch_size)
    return {"accuracy": accuracy, "threshold": threshold, "variance": variance.tolist(),
            "pruned_heads": pruning.as_lists(pruned.reshape(shape)), "trace": trace,
            "layer_weights": _layer_weights(pruned_variance, keep).tolist()}

  decision = stored_decision(workdir, "pruning", decide)
  keep = pruning.keep_mask(decision["pruned_heads"], cfg.num_heads)
  logging.info("PURE: %d of %d heads pruned.", int((keep == 0).sum()), keep.size)
  weights = np.asarray(decision["layer_weights"])[:, None] * keep
  objective = AttentionNormalizedLoss(tuple(map(tuple, weights.tolist())), config.penalty)
  params, losses = finetune_on_clean(
      model, pruning.zero_heads(params, keep), clean_train, config.finetune, loss=objective,
      frozen_heads=keep == 0, desc="PURE: attention-normalised fine-tune",
      workdir=workdir / "finetune" if workdir else None)
  return params, {**decision, "heads_pruned": int((keep == 0).sum()), "finetune_loss": losses}
