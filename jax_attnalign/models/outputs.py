"""What a forward pass returns, for every model family."""

from __future__ import annotations

import flax.struct
import jax


@flax.struct.dataclass
class ModelOutput:
  """Forward-pass results.

  logits: [B, C] (classification), [B, T, V] (masked_lm, causal_lm) or None (base).
  last_hidden_state: [B, T, D] after the final layer (and final norm for decoders).
  pooled: [B, D] BERT pooler output, or None.
  hidden_states: with `output_hidden_states=True`, L + 1 arrays [B, T, D]
    (embeddings, then each layer's output), as transformers returns them.
  cache: the updated key/value cache when decoding with one, else None.

  Example, a tiny random BERT without a task head:
    >>> import jax.numpy as jnp
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-bert"))  # task "base"
    >>> ids = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]])
    >>> out = model.apply(model.init(jax.random.key(0), ids), ids, output_hidden_states=True)
    >>> out.logits is None, out.pooled.shape, len(out.hidden_states)  # embeddings + 2 layers
    (True, (2, 16), 3)
  """
  logits: jax.Array | None
  last_hidden_state: jax.Array
  pooled: jax.Array | None = None
  hidden_states: tuple[jax.Array, ...] | None = None
  cache: dict | None = None
