"""The defense: alignment and head-wise optimizer (to come: sanitisation rounds, detector)."""

from jax_attnalign.defense.alignment import alignment_loss, alignment_optimizer
from jax_attnalign.defense.headwise import HeadRates, headwise_optimizer

__all__ = ["HeadRates", "alignment_loss", "alignment_optimizer", "headwise_optimizer"]
