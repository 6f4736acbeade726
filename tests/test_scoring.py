"""per_input: data-parallel chunks that skip the padding every row of a chunk shares."""

import jax
import numpy as np

from jax_attnalign import parallel
from jax_attnalign.defense.detector import input_scores
from jax_attnalign.defense.scoring import per_input, scores_of
from jax_attnalign.models import ModelConfig, build_model


def _ragged(seed: int, lengths: list[int], width: int, left: tuple[int, ...] = ()):
  """Random ids [n, width], each row right-padded to its length (left-padded for
  the rows in `left`)."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, 41, (len(lengths), width))
  mask = np.zeros_like(ids)
  for i, n in enumerate(lengths):
    if i in left:
      mask[i, width - n:] = 1
    else:
      mask[i, :n] = 1
  return {"input_ids": ids * mask, "attention_mask": mask, "labels": np.arange(len(lengths))}


def test_chunks_are_cut_to_their_longest_row_and_rows_come_back_in_order():
  mesh = parallel.data_mesh()
  d = mesh.shape[parallel.DATA]
  rng = np.random.RandomState(0)
  short, long = rng.randint(1, 9, d), rng.randint(20, 41, d - 1)
  order = rng.permutation(2 * d)  # rows shuffled; the last, left-padded, ends on a token
  lengths = np.concatenate([short, long, [3]])[order]
  arrays = _ragged(0, list(lengths), 40, left=(int(np.flatnonzero(order == 2 * d - 1)[0]),))
  seen = []

  def fn(batch):
    seen.append(batch["input_ids"].shape[1])
    return {"sum": (batch["input_ids"] * batch["attention_mask"]).sum(1),
            "label": batch["labels"]}

  out = per_input(fn, arrays, batch_size=d, mesh=mesh, bucket=8)
  np.testing.assert_array_equal(out["sum"], arrays["input_ids"].sum(1))
  np.testing.assert_array_equal(out["label"], arrays["labels"])
  # The d rows of extent <= 8 share a chunk cut to 8 slots; the left-padded row
  # (extent 40) goes with the long ones, uncut.
  assert seen == [8, 40]


def test_scores_of_ragged_rows_equal_each_row_scored_alone_at_its_own_length():
  cfg = ModelConfig(model_type="bert", vocab_size=41, hidden_size=20, num_layers=2,
                    num_heads=4, intermediate_size=23)
  model = build_model(cfg, "classification")
  d = parallel.data_mesh().shape[parallel.DATA]
  rng = np.random.RandomState(1)  # half the rows short: their chunk is cut to 16 of 32 slots
  lengths = list(rng.permutation(np.concatenate([rng.randint(3, 12, d), rng.randint(20, 33, d)])))
  arrays = _ragged(1, lengths, 32)
  del arrays["labels"]
  arrays["input_ids"][:, 0] = 1  # [CLS]
  params = model.init(jax.random.PRNGKey(0), arrays["input_ids"][:2])["params"]
  together = scores_of(model, params, arrays, "cls_row", "mean", batch_size=d)
  alone = [float(input_scores(model, params, {"input_ids": arrays["input_ids"][i:i + 1, :n],
                                              "attention_mask": arrays["attention_mask"][i:i + 1, :n]},
                              "cls_row", "mean")[0]) for i, n in enumerate(lengths)]
  np.testing.assert_allclose(together, alone, atol=1e-5)
