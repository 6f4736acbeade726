"""One process of tests/test_multihost.py, and what the README's multi-host section runs.

  python tests/multihost_worker.py OUT.npz [COORDINATOR PROCESS_ID NUM_PROCESSES]

Without a coordinator it runs alone. With one, it joins a `jax.distributed`
group first (the same call on every host of a TPU pod or a CPU cluster); the
rest is the same program in every process: a data-parallel training run of a
tiny BERT (`train.fit` over `parallel.data_mesh()`, i.e. every process's
devices) and a head-similarity scan of its inputs (`defense.scores_of`), each
process feeding the same global data. Process 0 writes the trained parameters,
the loss history and the scores to OUT.npz.
"""

import sys

import jax

if len(sys.argv) > 2:
  jax.distributed.initialize(sys.argv[2], num_processes=int(sys.argv[4]),
                             process_id=int(sys.argv[3]))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import traverse_util  # pylint: disable=g-import-not-at-top,wrong-import-position

from jax_attnalign import ModelConfig, build_model, parallel, train  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax_attnalign.defense import scores_of  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(out: str) -> None:
  model = build_model(ModelConfig.preset("tiny-bert"), "classification")
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 64, (32, 12)).astype(np.int32)
  ids[:, 0] = 1  # [CLS]
  arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "labels": rng.integers(0, 2, 32).astype(np.int32)}
  params = model.init(jax.random.key(0), ids[:2])["params"]
  optimizer = optax.adam(1e-2)
  state, history = train.fit(model, train.TrainState.create(params, optimizer), optimizer,
                             arrays, train.FitConfig(epochs=2, batch_size=8, dropout=False))
  trained = parallel.to_host(state.params)
  scores = scores_of(model, state.params, arrays, "full", "percentile", batch_size=8)
  if jax.process_index() == 0:
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(trained).items()}
    np.savez(out, losses=[h["loss"] for h in history], scores=scores,
             devices=len(jax.devices()), processes=jax.process_count(), **flat)


if __name__ == "__main__":
  main(sys.argv[1])
