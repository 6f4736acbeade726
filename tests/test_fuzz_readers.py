"""Fuzzing the checkpoint readers (hypothesis): random bytes, truncations and mutated
headers of safetensors files, shard indexes, GGUF files and config.json always end
in our clear error (CheckpointError naming the file) or a valid read, never a hang,
a crash or a raw exception. Small example counts keep the whole file under a minute."""

import json
import struct

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from jax_attnalign.errors import CheckpointError
from jax_attnalign.models import gguf_io, hf_io, safetensors_io
from test_gguf import _hf_weights, write_gguf

FUZZ = hypothesis.settings(max_examples=60, deadline=2000, derandomize=True,
                           suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _valid_safetensors() -> bytes:
  header = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
            "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}
  text = json.dumps(header).encode()
  return struct.pack("<Q", len(text)) + text + bytes(range(22))


def _read_or_our_error(read, path) -> None:
  try:
    read(path)
  except CheckpointError as e:
    assert str(path) in str(e)


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
  path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
  write_gguf(path, _hf_weights(tied=True))
  return path.read_bytes()


@FUZZ
@hypothesis.given(data=st.binary(max_size=300))
def test_safetensors_random_bytes(tmp_path, data):
  path = tmp_path / "w.safetensors"
  path.write_bytes(data)
  _read_or_our_error(safetensors_io.read_safetensors, path)


@FUZZ
@hypothesis.given(cut=st.integers(0, 80), position=st.integers(0, 80), byte=st.integers(0, 255))
def test_safetensors_truncated_and_mutated(tmp_path, cut, position, byte):
  data = bytearray(_valid_safetensors())
  data[position % len(data)] = byte
  path = tmp_path / "w.safetensors"
  path.write_bytes(bytes(data[:len(data) - cut]))
  _read_or_our_error(safetensors_io.read_safetensors, path)


@FUZZ
@hypothesis.given(header=JSON)
def test_safetensors_random_header(tmp_path, header):
  text = json.dumps(header).encode()
  path = tmp_path / "w.safetensors"
  path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(32))
  _read_or_our_error(safetensors_io.read_safetensors, path)


@FUZZ
@hypothesis.given(index=JSON | st.fixed_dictionaries({"weight_map": JSON}))
def test_shard_index_random_json(tmp_path, index):
  (tmp_path / safetensors_io.SAFE_INDEX).write_text(json.dumps(index))
  try:
    safetensors_io.read_checkpoint_dir(tmp_path)
  except CheckpointError as e:
    assert str(tmp_path) in str(e)
  except FileNotFoundError as e:  # a well-formed index naming a shard that is not there
    assert "lists the shard" in str(e)


@FUZZ
@hypothesis.given(changes=st.dictionaries(
    st.sampled_from(["model_type", "vocab_size", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim",
                     "intermediate_size", "sliding_window", "rope_scaling", "id2label",
                     "eos_token_id", "architectures", "max_position_embeddings",
                     "hidden_act", "rms_norm_eps"]), JSON, max_size=4))
def test_config_json_mutated_fields(changes):
  config = {"model_type": "llama", "vocab_size": 64, "hidden_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 32,
            **changes}
  try:
    hf_io.read_architecture(config, "fuzz/config.json")
  except CheckpointError as e:
    assert "fuzz/config.json" in str(e)


@FUZZ
@hypothesis.given(data=st.binary(max_size=200))
def test_config_json_random_bytes(tmp_path, data):
  (tmp_path / "config.json").write_bytes(data)
  try:
    hf_io.read_architecture(safetensors_io.read_config_json(tmp_path), tmp_path)
  except CheckpointError as e:
    assert str(tmp_path) in str(e)


@hypothesis.settings(FUZZ, max_examples=80)
@hypothesis.given(cut=st.integers(0, 4000), position=st.integers(0, 600), byte=st.integers(0, 255))
def test_gguf_truncated_and_mutated(tmp_path, gguf_bytes, cut, position, byte):
  data = bytearray(gguf_bytes)
  data[position] = byte  # within the header and metadata
  path = tmp_path / "m.gguf"
  path.write_bytes(bytes(data[:max(len(data) - cut, 0)]))
  try:
    _, state = gguf_io.read_gguf(path)
    for tensor in state.values():  # a mutated shape or type shows when dequantised
      np.asarray(tensor)
  except CheckpointError as e:
    assert str(path) in str(e)
