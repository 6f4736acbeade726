"""The defense: head-wise optimizer (more to come: alignment, sanitisation, detector)."""

from jax_attnalign.defense.headwise import HeadRates, headwise_optimizer, kv_head_classes

__all__ = ["HeadRates", "headwise_optimizer", "kv_head_classes"]
