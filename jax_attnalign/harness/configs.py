"""Experiment configs: `ml_collections.ConfigDict`s built from the library's dataclasses.

A config has the parts `setup` (`pipeline.DefenseSetup`: victim, data, how the
suspects are chosen), `sanitize` (`defense.SanitizeConfig`, one nested dict per
group: classify, align, finetune, stopping), `detector` (`defense.DetectorConfig`)
`baselines` (one config per baseline: the classifiers' `baselines.BASELINES` or
another {name: config class}) and, for the classifiers, `restarts`
(`defense.RestartConfig`), with the dataclasses' defaults, so a config file only
states what it changes:

  def get_config():
    config = default_config()
    config.sanitize.align.steps = 80
    return config
"""

from __future__ import annotations

import dataclasses

import ml_collections

from jax_attnalign.baselines import BASELINES
from jax_attnalign.defense.detector import DetectorConfig
from jax_attnalign.defense.restarts import RestartConfig
from jax_attnalign.defense.sanitize import SanitizeConfig
from jax_attnalign.harness.pipeline import DefenseSetup


def _to_plain(value):
  if dataclasses.is_dataclass(value):
    return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
  if isinstance(value, tuple):
    return list(value)
  return value


CLASSIFIER_BASELINES = {name: cls for name, (_, cls) in BASELINES.items()}


def default_config(setup=None, *, restarts: bool = True,
                   baselines: dict[str, type] | None = None) -> ml_collections.ConfigDict:
  """{'setup': the setup dataclass's defaults (default: DefenseSetup, victim ''),
  'sanitize', 'detector', 'baselines' ({name: config} of `baselines`, a {name:
  config class}; default: CLASSIFIER_BASELINES) and, with `restarts` (the
  classifiers'), 'restarts': their dataclasses' defaults}."""
  setup = _to_plain(DefenseSetup(victim="") if setup is None else setup)
  if "attack_kwargs" in setup:
    setup["attack_kwargs"] = {}
  parts = {"setup": setup, "sanitize": _to_plain(SanitizeConfig()),
           "detector": _to_plain(DetectorConfig()),
           "baselines": {name: _to_plain(cls()) for name, cls in
                         (CLASSIFIER_BASELINES if baselines is None else baselines).items()}}
  if restarts:
    parts["restarts"] = _to_plain(RestartConfig())
  return ml_collections.ConfigDict(parts)


def with_recipe(config: ml_collections.ConfigDict, recipes: dict[str, dict], recipe: str,
                path: str) -> ml_collections.ConfigDict:
  """`config` with `recipes[recipe]` merged into its groups (the config file at `path`
  names its recipes `<file>:<name>`, '' being the file's own config); an unknown
  name raises with the known ones."""
  if recipe not in recipes:
    name = path.rsplit("/", 1)[-1]
    raise ValueError(f"Unknown defense recipe {recipe!r}: use {path} or one of "
                     f"{', '.join(f'{name}:{r}' for r in recipes if r)}.")
  config.update(recipes[recipe])
  return config


def _build(cls, values: dict, where: str):
  """`cls` from a plain dict: dataclass-valued fields from nested dicts, tuples from
  lists. A key that is not a field raises ValueError naming it and the fields."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"Unknown keys {unknown} in {where}; {cls.__name__} has "
                     f"{sorted(fields)}.")
  kwargs = {}
  for name, value in values.items():
    default = fields[name].default
    if dataclasses.is_dataclass(default):
      value = _build(type(default), value, f"{where}.{name}")
    elif isinstance(default, tuple):
      value = tuple(value)
    kwargs[name] = value
  return cls(**kwargs)


def sanitize_config(config: ml_collections.ConfigDict) -> SanitizeConfig:
  """The SanitizeConfig of `config.sanitize`, its groups rebuilt."""
  return _build(SanitizeConfig, config.to_dict(), "sanitize")


def detector_config(config: ml_collections.ConfigDict) -> DetectorConfig:
  """The DetectorConfig of `config.detector`."""
  return _build(DetectorConfig, config.to_dict(), "detector")


def restart_config(config: ml_collections.ConfigDict) -> RestartConfig:
  """The RestartConfig of `config.restarts`."""
  return _build(RestartConfig, config.to_dict(), "restarts")


def baseline_config(config: ml_collections.ConfigDict, name: str,
                    classes: dict[str, type] | None = None):
  """The config dataclass of baseline `name` from a config's `baselines` part
  (`classes`: {name: config class}, default CLASSIFIER_BASELINES); a key the
  part lacks takes the dataclass's default."""
  classes = CLASSIFIER_BASELINES if classes is None else classes
  return _build(classes[name], config[name].to_dict(), f"baselines.{name}")


def defense_setup(config: ml_collections.ConfigDict, **overrides) -> DefenseSetup:
  """The DefenseSetup of `config.setup`, with `overrides` applied."""
  fields = {**config.to_dict(), **overrides}
  fields["attack_kwargs"] = tuple(sorted(dict(fields["attack_kwargs"]).items()))
  return DefenseSetup(**fields)
