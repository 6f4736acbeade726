"""Pure functions over captured attention: head similarity (more to come)."""

from jax_attnalign.analysis.similarity import head_cosine, pair_statistics

__all__ = ["head_cosine", "pair_statistics"]
