"""Views of attention maps: which block of each head's map is compared.

DESIGN.md ("Where to look matters") found that only some blocks of the maps show
a backdoor, so the block is a named, first-class choice:

  rows         'output': the rows of the output positions. Encoders: the [CLS]
               row (row 0) over the input. Decoders: the generation-to-prompt
               block A[Tp:T, :Tp] (paper §3, eq. 2), generated rows over prompt
               columns. 'all': every valid row over every valid column.
  layers       'all', or k: the last k layers.
  drop_special special-token columns ([CLS], [SEP], BOS, ...) left out,
  renormalize  and each kept row rescaled to sum to 1 over its kept columns.

Decoder layout. A sequence of T slots holds one example's prompt, then its
generated (or teacher-forced answer) tokens. `prompt_lengths[b]` is the slot at
which example b's generated part starts, i.e. its prompt tokens plus any left
padding before them:
  * prompts left-padded to a shared Tp (as `generate` and `encode_prompts` make
    them), generated tokens after: prompt_lengths = Tp for every example, and
    each example's real prompt length is read off attention_mask[:, :Tp];
  * right-padded prompt + answer rows (`encode_prompt_response`):
    prompt_lengths = argmax(loss_mask, -1), the first answer slot.
The block keeps rows t >= prompt_lengths[b] and columns s < prompt_lengths[b],
both where attention_mask is 1, so padding never counts. Its shape is the whole
[T, S] with the rest zeroed (shapes stay static under jit); the zeros change no
dot product, so cosine similarity equals that of the compact A[Tp:T, :Tp].
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

Array = jax.Array
Rows = Literal["output", "all"]


@dataclasses.dataclass(frozen=True)
class View:
  """Which block of each head's map [T, S] is compared (hashable: a jit static).

  rows: 'output' (encoders: the [CLS] row; decoders: generated rows over the
  prompt) or 'all'. layers: 'all' or an int k, the last k layers. drop_special:
  special-token columns left out. renormalize: each kept row rescaled to sum to
  1 over its kept columns.

  >>> view = View(rows="output", layers=1, drop_special=True, renormalize=True)
  >>> view == VIEWS["cls_row_last_layer"], view.layer_indices(6)  # MiniLM: its layer 5
  (True, range(5, 6))
  """
  rows: Rows = "output"
  layers: Literal["all"] | int = "all"
  drop_special: bool = False
  renormalize: bool = False

  def __post_init__(self):
    if self.rows not in ("output", "all"):
      raise ValueError(f"View rows must be 'output' or 'all', got {self.rows!r}.")
    if self.layers != "all" and not (isinstance(self.layers, int) and self.layers >= 1):
      raise ValueError(f"View layers must be 'all' or an int k >= 1, got {self.layers!r}.")

  def layer_indices(self, num_layers: int) -> range:
    """The layers this view reads out of a model with `num_layers` layers."""
    if self.layers == "all":
      return range(num_layers)
    if self.layers > num_layers:
      raise ValueError(f"View asks for the last {self.layers} layers of {num_layers}.")
    return range(num_layers - self.layers, num_layers)


# The views of DESIGN.md's probe table, plus the decoders' paper view. 'cls_row'
# and 'gen_to_prompt' are the same output-rows view, named for each family.
# The probe's last-layer row dropped the special columns: with [CLS]/[SEP] kept,
# clean inputs saturate near 1.0 (second row), not the 0.6% it reports.
VIEWS: dict[str, View] = {
    "full": View(rows="all"),
    "cls_row": View(rows="output"),
    "cls_row_nospecial": View(rows="output", drop_special=True, renormalize=True),
    "cls_row_last_layer": View(rows="output", layers=1, drop_special=True,
                               renormalize=True),
    "gen_to_prompt": View(rows="output"),
    "gen_to_prompt_nospecial": View(rows="output", drop_special=True, renormalize=True),
}


def resolve_view(view: View | str) -> View:
  """A View, or the preset of that name in VIEWS.

  >>> resolve_view("cls_row_nospecial")
  View(rows='output', layers='all', drop_special=True, renormalize=True)
  """
  if isinstance(view, View):
    return view
  if view not in VIEWS:
    raise ValueError(f"Unknown view {view!r}; named views: {sorted(VIEWS)}.")
  return VIEWS[view]


def view_block(maps: Array, view: View | str, *, attention_mask: Array,
               special_mask: Array | None = None, prompt_length: Array | None = None,
               is_decoder: bool = False, row_slots: Array | None = None
               ) -> tuple[Array, Array]:
  """The viewed block of one input's maps (no batch axis; layers not selected).

  maps: [..., N, T, S] float with T == S (a full forward pass); attention_mask,
  special_mask: [S] (1 = token / special token); prompt_length: [] int, the
  first generated slot (decoders; used by rows='output', see the module docstring).
  Returns (block [..., N, R, S] with entries outside the view zeroed and rows
  renormalised if asked, keep [R, S] bool), R = 1 for the encoders' output row
  and T otherwise.

  row_slots: [T] int, given when maps hold only some query rows (attention
  computed a block of rows at a time, `models.hooks.Accumulator`): the slot of
  each row; slots >= S are padding and are left out. Then R = T always (an
  encoder's output row is kept where its slot is 0), so blocks of rows give the
  whole block's entries between them.
  """
  view = resolve_view(view)
  t, s = maps.shape[-2:]
  if row_slots is None and t != s:
    raise ValueError(
        f"Views read the maps of a full forward pass (T == S), got T={t}, S={s}. "
        "generate()'s attention is already the generation-to-prompt block: pass it "
        "flattened to head_cosine with valid = token_mask x prompt mask.")
  if view.drop_special and special_mask is None:
    raise ValueError("This view drops special-token columns: pass special_mask.")
  if prompt_length is not None and not is_decoder:
    raise ValueError("prompt_lengths is for decoders; an encoder's output row is [CLS].")
  if view.rows == "output" and is_decoder and prompt_length is None:
    raise ValueError("A decoder's output-rows view needs prompt_lengths: the slot "
                     "where each example's generated part starts.")
  valid = attention_mask.astype(bool)  # [S]
  cols = valid & ~special_mask.astype(bool) if view.drop_special else valid
  if row_slots is None:
    slots, rows = jnp.arange(t), valid
  else:
    slots = row_slots
    rows = (slots < s) & valid[jnp.minimum(slots, s - 1)]
  if view.rows == "output" and is_decoder:
    rows = rows & (slots >= prompt_length)
    cols = cols & (jnp.arange(s) < prompt_length)
  elif view.rows == "output" and row_slots is None:
    maps, rows = maps[..., :1, :], rows[:1]  # the [CLS] row
  elif view.rows == "output":
    rows = rows & (slots == 0)
  keep = rows[:, None] & cols[None, :]  # [R, S]
  block = jnp.where(keep, maps.astype(jnp.float32), 0.0)
  if view.renormalize:
    total = jnp.sum(block, axis=-1, keepdims=True)
    block = block / jnp.where(total > 0, total, 1.0)
  return block, keep


def select_layers(maps: Array, view: View | str) -> Array:
  """maps [L, ...] -> [L', ...], the layers of the view."""
  layers = resolve_view(view).layer_indices(maps.shape[0])
  return maps[layers.start:layers.stop]


def extract_view(maps: Array, view: View | str, *, attention_mask: Array,
                 special_mask: Array | None = None, prompt_lengths: Array | None = None,
                 is_decoder: bool = False) -> tuple[Array, Array]:
  """Each head's viewed block, flattened row-major (eq. 2), and its valid entries.

  maps: [L, B, N, T, T] float (from `attention_maps`); attention_mask,
  special_mask: [B, T]; prompt_lengths: [B] int (decoders' output rows, see the
  module docstring). Returns (blocks [L', B, N, F] with entries outside the view
  zeroed, valid [B, F] bool), F = R * T (R = 1 for the [CLS] row, else T).

  Example, random maps of 2 layers x 4 heads for 2 inputs of 6 tokens:
    >>> import numpy as np
    >>> maps = np.random.default_rng(0).dirichlet(np.ones(6), (2, 2, 4, 6))  # [L, B, N, T, T]
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]])
    >>> extract = jax.jit(extract_view, static_argnums=1)  # the view is static
    >>> blocks, valid = extract(maps, "cls_row_nospecial", attention_mask=jnp.sign(ids),
    ...                         special_mask=(ids == 1) | (ids == 2))
    >>> blocks.shape, valid.astype(int).tolist()  # the [CLS] row, words only
    ((2, 2, 4, 6), [[0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]])
    >>> bool(jnp.allclose(blocks.sum(-1), 1.0))  # renormalised over the kept columns
    True
  """
  view = resolve_view(view)
  one = lambda m, a, sp, p: view_block(m, view, attention_mask=a, special_mask=sp,
                                       prompt_length=p, is_decoder=is_decoder)
  block, keep = jax.vmap(one, in_axes=(1, 0, 0, 0), out_axes=(1, 0))(
      select_layers(maps, view), attention_mask, special_mask, prompt_lengths)
  # block: [L', B, N, R, S]; keep: [B, R, S]
  return block.reshape(*block.shape[:3], -1), keep.reshape(keep.shape[0], -1)
