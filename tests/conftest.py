"""Test set-up: 8 fake CPU devices before jax is imported, offline HF, data fixtures."""

import os

_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):  # xdist workers inherit it
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

from jax_attnalign.assets import bundled_minilm_path  # noqa: E402

DATA_ENV = "JAX_ATTNALIGN_DATA"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The real public data beside the checkout (../shared/data), or $JAX_ATTNALIGN_DATA."""
  default = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
  path = pathlib.Path(os.environ.get(DATA_ENV, default))
  if not path.is_dir():
    pytest.skip(f"real data folder {path} is absent (set {DATA_ENV} to its location)")
  return path


@pytest.fixture(scope="session")
def minilm_path() -> pathlib.Path:
  """The bundled pretrained MiniLM checkpoint directory."""
  try:
    return bundled_minilm_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))
