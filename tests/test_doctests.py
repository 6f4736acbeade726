"""The docstring examples run, and every public name of the four namespaces has one.

The public names are those in `__all__` of jax_attnalign, jax_attnalign.analysis,
jax_attnalign.defense and jax_attnalign.baselines; their examples live in the
modules that define them (`doctest.testmod` skips re-exports), so those modules
are the ones run here.
"""

import doctest
import importlib

import pytest

NAMESPACES = ("jax_attnalign", "jax_attnalign.analysis", "jax_attnalign.defense",
              "jax_attnalign.baselines")
MODULES = (
    "jax_attnalign",
    "jax_attnalign.assets",
    "jax_attnalign.audit",
    "jax_attnalign.data.templates",
    "jax_attnalign.models",
    "jax_attnalign.models.config",
    "jax_attnalign.models.generation",
    "jax_attnalign.models.hf_io",
    "jax_attnalign.models.hooks",
    "jax_attnalign.models.outputs",
    "jax_attnalign.analysis.importance",
    "jax_attnalign.analysis.safety",
    "jax_attnalign.analysis.similarity",
    "jax_attnalign.analysis.streaming",
    "jax_attnalign.analysis.views",
    "jax_attnalign.baselines",
    "jax_attnalign.baselines.cleangen",
    "jax_attnalign.baselines.fine_pruning",
    "jax_attnalign.baselines.finetune",
    "jax_attnalign.baselines.graceful",
    "jax_attnalign.baselines.meft",
    "jax_attnalign.baselines.muscle_lora",
    "jax_attnalign.baselines.pruning",
    "jax_attnalign.baselines.pure",
    "jax_attnalign.defense",
    "jax_attnalign.defense.alignment",
    "jax_attnalign.defense.detector",
    "jax_attnalign.defense.headwise",
    "jax_attnalign.defense.restarts",
    "jax_attnalign.defense.sanitize",
    "jax_attnalign.defense.scoring",
    "jax_attnalign.detection",
    "jax_attnalign.detection.base",
    "jax_attnalign.harness.detection",
    "jax_attnalign.harness.reporting",
    "jax_attnalign.harness.reporting_lm",
    "jax_attnalign.harness.victims",
    "jax_attnalign.errors",
    "jax_attnalign.models.layers",
    "jax_attnalign.validation",
)


def public_objects() -> dict:
  """{'namespace.name': object} of the functions and classes in the namespaces'
  __all__ (constants such as PATTERNS and VIEWS need no example)."""
  found = {}
  for namespace in NAMESPACES:
    module = importlib.import_module(namespace)
    for name in module.__all__:
      obj = getattr(module, name)
      if callable(obj):
        found[f"{namespace}.{name}"] = obj
  return found


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
  results = doctest.testmod(importlib.import_module(name),
                            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert results.failed == 0, f"{results.failed} example(s) of {name} failed (stdout above)"
  assert results.attempted > 0, f"{name} has no docstring example left"


def test_every_public_name_has_an_example():
  missing = sorted(name for name, obj in public_objects().items()
                   if ">>>" not in (obj.__doc__ or ""))
  assert not missing, f"public names without a >>> example in their docstring: {missing}"


def test_public_names_are_defined_in_doctested_modules():
  homes = {name: obj.__module__ for name, obj in public_objects().items()}
  untested = {name: home for name, home in homes.items() if home not in MODULES}
  assert not untested, f"add these names' modules to MODULES: {untested}"
