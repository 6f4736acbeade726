"""Views of the maps against brute-force NumPy slicing."""

import jax
import numpy as np
import pytest

from jax_attnalign.analysis.views import VIEWS, View, extract_view, resolve_view

L, B, N, T = 3, 4, 5, 7


def random_maps(rng, mask):
  """Row-stochastic maps [L, B, N, T, T] over each input's valid key slots."""
  maps = rng.rand(L, B, N, T, T) * mask[None, :, None, None, :]
  return (maps / maps.sum(-1, keepdims=True)).astype(np.float32)


def brute_block(m, mask, special, prompt_length, view, is_decoder):
  """The compact viewed block of one head's map m [T, T], by explicit slicing."""
  decoder_output = view.rows == "output" and is_decoder
  if view.rows == "output" and not is_decoder:
    rows = [0]
  else:
    rows = [t for t in range(T) if mask[t] and (not decoder_output or t >= prompt_length)]
  cols = [s for s in range(T) if mask[s] and not (view.drop_special and special[s])
          and (not decoder_output or s < prompt_length)]
  block = m[np.ix_(rows, cols)]
  if view.renormalize:
    block = block / block.sum(-1, keepdims=True)
  return block


def check_against_brute_force(maps, mask, special, prompt_lengths, view, is_decoder):
  fn = jax.jit(extract_view, static_argnames=("view", "is_decoder"))
  blocks, valid = fn(maps, view, attention_mask=mask, special_mask=special,
                     prompt_lengths=prompt_lengths, is_decoder=is_decoder)
  blocks, valid = np.asarray(blocks), np.asarray(valid)
  layers = range(L) if view.layers == "all" else range(L - view.layers, L)
  assert blocks.shape[:3] == (len(layers), B, N)
  assert valid.shape == (B, blocks.shape[-1])
  for i, l in enumerate(layers):
    for b in range(B):
      p = None if prompt_lengths is None else prompt_lengths[b]
      for n in range(N):
        ref = brute_block(maps[l, b, n], mask[b], special[b], p, view, is_decoder)
        np.testing.assert_allclose(blocks[i, b, n][valid[b]], ref.ravel(), atol=1e-6)
        assert not blocks[i, b, n][~valid[b]].any()  # outside the view: zero


@pytest.fixture
def encoder_inputs():
  rng = np.random.RandomState(0)
  lengths = np.array([7, 5, 3, 6])  # right padding
  mask = (np.arange(T) < lengths[:, None]).astype(np.int32)
  special = np.zeros((B, T), np.int32)
  special[:, 0] = 1  # [CLS]
  special[np.arange(B), lengths - 1] = 1  # [SEP]
  return random_maps(rng, mask), mask, special


@pytest.mark.parametrize("view", [VIEWS["full"], VIEWS["cls_row"],
                                  VIEWS["cls_row_nospecial"], VIEWS["cls_row_last_layer"],
                                  View(rows="all", layers=2, drop_special=True,
                                       renormalize=True)])
def test_encoder_views_match_slicing(encoder_inputs, view):
  maps, mask, special = encoder_inputs
  check_against_brute_force(maps, mask, special, None, view, is_decoder=False)


def test_renormalised_rows_sum_to_one(encoder_inputs):
  maps, mask, special = encoder_inputs
  view = View(rows="all", drop_special=True, renormalize=True)
  blocks, _ = extract_view(maps, view, attention_mask=mask, special_mask=special)
  sums = np.asarray(blocks).reshape(L, B, N, T, T).sum(-1)  # [L, B, N, T]
  np.testing.assert_allclose(sums, np.broadcast_to(mask[None, :, None], sums.shape),
                             atol=1e-6)  # 1 on valid rows, 0 on padded ones


@pytest.mark.parametrize("layout", ["left_padded_prompts", "right_padded_rows"])
@pytest.mark.parametrize("name", ["gen_to_prompt", "gen_to_prompt_nospecial", "full"])
def test_decoder_generation_to_prompt(layout, name):
  rng = np.random.RandomState(1)
  if layout == "left_padded_prompts":  # prompts left-padded to Tp = 4, then 3 generated
    prompt_lengths = np.full(B, 4)
    mask = np.ones((B, T), np.int32)
    mask[1, :2] = mask[2, :1] = 0  # shorter prompts
    mask[3, 6:] = 0  # generation stopped after EOS
  else:  # prompt + answer + right padding: each example's own prompt length
    prompt_lengths = np.array([3, 5, 2, 4])
    mask = (np.arange(T) < np.array([7, 6, 4, 5])[:, None]).astype(np.int32)
  first = np.argmax(mask, axis=1)
  special = np.zeros((B, T), np.int32)
  special[np.arange(B), first] = 1  # BOS
  causal = np.tril(np.ones((T, T)))
  maps = random_maps(rng, mask) * causal
  maps = (maps / np.maximum(maps.sum(-1, keepdims=True), 1e-30)).astype(np.float32)
  check_against_brute_force(maps, mask, special, prompt_lengths, VIEWS[name],
                            is_decoder=True)


def test_named_views_and_errors(encoder_inputs):
  maps, mask, special = encoder_inputs
  # Every row of DESIGN.md's probe table has a name.
  assert VIEWS["full"] == View(rows="all")
  assert VIEWS["cls_row"] == VIEWS["gen_to_prompt"] == View(rows="output")
  assert VIEWS["cls_row_nospecial"].drop_special and VIEWS["cls_row_nospecial"].renormalize
  assert VIEWS["cls_row_last_layer"].layers == 1
  assert resolve_view("full") is VIEWS["full"]
  with pytest.raises(ValueError, match="Unknown view"):
    resolve_view("cls")
  with pytest.raises(ValueError, match="layers"):
    View(layers=0)
  with pytest.raises(ValueError, match="last 4 layers of 3"):
    extract_view(maps, View(layers=4), attention_mask=mask)
  with pytest.raises(ValueError, match="special_mask"):
    extract_view(maps, "cls_row_nospecial", attention_mask=mask)
  with pytest.raises(ValueError, match="needs prompt_lengths"):
    extract_view(maps, "gen_to_prompt", attention_mask=mask, is_decoder=True)
  with pytest.raises(ValueError, match="for decoders"):
    extract_view(maps, "cls_row", attention_mask=mask, prompt_lengths=np.ones(B, int))
  with pytest.raises(ValueError, match="T == S"):
    extract_view(maps[..., :3], "full", attention_mask=mask)
