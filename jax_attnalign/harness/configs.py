"""Experiment configs: `ml_collections.ConfigDict`s built from the library's dataclasses.

A config has two parts, `setup` (`pipeline.DefenseSetup`: victim, data, how the
suspects are chosen) and `sanitize` (`defense.SanitizeConfig`), with the
dataclasses' defaults, so a config file only states what it changes:

  def get_config():
    config = default_config()
    config.sanitize.align_steps = 80
    return config
"""

from __future__ import annotations

import dataclasses

import ml_collections

from jax_attnalign.defense.headwise import HeadRates
from jax_attnalign.defense.sanitize import SanitizeConfig
from jax_attnalign.harness.pipeline import DefenseSetup


def _to_plain(value):
  if dataclasses.is_dataclass(value):
    return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
  if isinstance(value, tuple):
    return list(value)
  return value


def default_config(setup=None) -> ml_collections.ConfigDict:
  """{'setup': the setup dataclass's defaults (default: DefenseSetup, victim ''),
  'sanitize': SanitizeConfig defaults}."""
  setup = _to_plain(DefenseSetup(victim="") if setup is None else setup)
  if "attack_kwargs" in setup:
    setup["attack_kwargs"] = {}
  return ml_collections.ConfigDict({"setup": setup,
                                    "sanitize": _to_plain(SanitizeConfig())})


def sanitize_config(config: ml_collections.ConfigDict) -> SanitizeConfig:
  """The SanitizeConfig of `config.sanitize` (unknown keys raise TypeError)."""
  fields = config.to_dict()
  fields["rates"] = HeadRates(**fields["rates"])
  fields["stages"] = tuple(fields["stages"])
  return SanitizeConfig(**fields)


def defense_setup(config: ml_collections.ConfigDict, **overrides) -> DefenseSetup:
  """The DefenseSetup of `config.setup`, with `overrides` applied."""
  fields = {**config.to_dict(), **overrides}
  fields["attack_kwargs"] = tuple(sorted(dict(fields["attack_kwargs"]).items()))
  return DefenseSetup(**fields)
