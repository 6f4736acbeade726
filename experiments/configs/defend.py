"""The defense with DESIGN.md's defaults (view, rates, rounds, detector)."""

from jax_attnalign.configs import default_config


def get_config():
  return default_config()
