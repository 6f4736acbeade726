"""Every input's detector score, data-parallel; the calibrated detector and the
inputs it flags (the suspects of the label-free mode).

  scores = scores_of(model, params, arrays, "cls_row", "mean")
  detector = calibrated_detector(model, params, clean, DetectorConfig())
  suspects, scores = flagged_inputs(model, params, incoming, detector)

The inputs are checked once per call, on the host (`validation.batch_inputs`).
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from jax_attnalign import parallel, validation
from jax_attnalign.defense.detector import (Detector, DetectorConfig, batch_scores,
                                            calibrate_detector)
from jax_attnalign.models import MODEL_INPUTS
from jax_attnalign.train import cut_padding, row_extents

VIEW_INPUTS = ("special_mask", "prompt_lengths")


def per_input(fn: Callable, arrays: dict[str, np.ndarray], batch_size: int,
              mesh: jax.sharding.Mesh, *, bucket: int | None = 16):
  """fn(batch) -> per-row array (or a pytree of them), over `arrays` in chunks
  sharded on the mesh; rows come back in order: [n, ...].

  Padding is not computed on: rows are taken in order of their extent (last
  attended slot + 1), and each chunk's sequence-shaped fields ([n, T, ...]) are
  cut to the chunk's longest extent rounded up to `bucket` slots (a few compiled
  widths). The columns cut are padding in every row of the chunk, which every
  view, loss and statistic masks, so fn's per-row values must not depend on the
  width (left-padded rows end on a token and are never cut); bucket None keeps the
  full width, for a value that depends on it (PURE's variance over the padded
  row). Each chunk is padded to a multiple of the devices with copies of its first
  row, whose results are dropped.
  """
  devices = mesh.shape[parallel.DATA]
  size = -(-batch_size // devices) * devices
  order = np.argsort(row_extents(arrays["attention_mask"]), kind="stable")
  out = []
  for start in range(0, len(order), size):
    chunk = {k: v[order[start:start + size]] for k, v in arrays.items()}
    if bucket is not None:
      chunk = cut_padding(chunk, bucket)
    chunk, real = parallel.pad_to_multiple(chunk, devices)
    out.append(jax.tree_util.tree_map(lambda x, real=real: np.asarray(x)[:real],
                                      parallel.to_host(fn(parallel.shard_batch(chunk, mesh)))))
  back = np.argsort(order)
  return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts)[back], *out)


def view_kwargs(batch: dict) -> dict:
  return {k: batch.get(k) for k in VIEW_INPUTS}


def model_fields(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  keep = MODEL_INPUTS + ("labels", "loss_mask") + VIEW_INPUTS
  return {k: v for k, v in arrays.items() if k in keep}


def scores_of(model, params, arrays: dict[str, np.ndarray], view: str,
              statistic: str | tuple[str, ...], *, batch_size: int = 32,
              mesh: jax.sharding.Mesh | None = None, per_layer: bool = False):
  """Every input's detector score (`input_scores`), data-parallel: [n] (per_layer:
  [n, L']); a tuple of statistics gives {statistic: scores} from one pass.

  Example, 16 random inputs to a tiny random BERT:
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = np.random.default_rng(0).integers(3, 64, (16, 6)); ids[:, 0] = 1  # [CLS] first
    >>> params = model.init(jax.random.key(0), ids[:2])["params"]
    >>> inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    >>> scores = scores_of(model, params, inputs, "cls_row", ("mean", "frac_above"), batch_size=8)
    >>> sorted((name, s.shape) for name, s in scores.items())  # both from one forward pass
    [('frac_above', (16,)), ('mean', (16,))]
  """
  validation.batch_inputs(model.config, arrays, where="scores_of")
  mesh = mesh or parallel.data_mesh()
  return per_input(lambda b: batch_scores(model, params, b["input_ids"], b["attention_mask"],
                                          view, statistic, per_layer=per_layer,
                                          **view_kwargs(b)),
                   model_fields(arrays), batch_size, mesh)


def calibrated_detector(model, params, clean: dict[str, np.ndarray], config: DetectorConfig,
                        *, batch_size: int = 32, mesh: jax.sharding.Mesh | None = None
                        ) -> Detector:
  """The detector of `config` calibrated on every row of `clean` (their scores)."""
  return calibrate_detector(scores_of(model, params, clean, config.view, config.statistic,
                                      batch_size=batch_size, mesh=mesh),
                            view=config.view, statistic=config.statistic, fpr=config.fpr)


def flagged_inputs(model, params, arrays: dict[str, np.ndarray], detector: Detector, *,
                   batch_size: int = 32, mesh: jax.sharding.Mesh | None = None
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The inputs the detector flags (the suspects of the label-free mode) and all scores.

  Example, a detector calibrated to flag about 20% of 16 random inputs:
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    >>> ids = np.random.default_rng(0).integers(3, 64, (16, 6)); ids[:, 0] = 1  # [CLS] first
    >>> params = model.init(jax.random.key(0), ids[:2])["params"]
    >>> inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    >>> detector = calibrate_detector(scores_of(model, params, inputs, "cls_row", "mean"),
    ...                               view="cls_row", fpr=0.2)
    >>> suspects, scores = flagged_inputs(model, params, inputs, detector)
    >>> suspects["input_ids"].shape, int(detector.flag(scores).sum())
    ((3, 6), 3)
  """
  scores = scores_of(model, params, arrays, detector.view, detector.statistic,
                     batch_size=batch_size, mesh=mesh)
  keep = detector.flag(scores)
  return {k: v[keep] for k, v in arrays.items()}, scores


