"""GGUF import on small synthetic files written with the `gguf` package's own writer.

A random Llama in HF layout is quantised (Q8_0 matrices, F32 norms and one F32
matrix), its query/key rows put in llama.cpp's rotary order, and written as
GGUF. `load_pretrained` must give the logits of a float64 NumPy forward of the
same (quantised, then dequantised) weights. Needs no downloaded model.
"""

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QType
from gguf import quants

import jax_attnalign
from jax_attnalign.models import gguf_io

L, D, N, K, H, F, V = 2, 96, 3, 1, 32, 160, 61  # Q8_0 blocks need in-features % 32 == 0
THETA, EPS = 313.0, 1e-5
F32_MATRIX = "model.layers.1.self_attn.v_proj.weight"  # stored unquantised
_GGUF_NAMES = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _hf_weights(tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.RandomState(seed)
  normal = lambda *shape: rng.normal(0.0, 0.3, shape).astype(np.float32)
  norm = lambda: (1.0 + 0.1 * rng.normal(size=D)).astype(np.float32)
  w = {"model.embed_tokens.weight": normal(V, D), "model.norm.weight": norm()}
  for i in range(L):
    p = f"model.layers.{i}."
    w.update({p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
              p + "self_attn.q_proj.weight": normal(N * H, D),
              p + "self_attn.k_proj.weight": normal(K * H, D),
              p + "self_attn.v_proj.weight": normal(K * H, D),
              p + "self_attn.o_proj.weight": normal(D, N * H),
              p + "mlp.gate_proj.weight": normal(F, D), p + "mlp.up_proj.weight": normal(F, D),
              p + "mlp.down_proj.weight": normal(D, F)})
  if not tied:
    w["lm_head.weight"] = normal(V, D)
  return w


def _gguf_name(hf: str) -> str:
  module, leaf = hf.rsplit(".", 1)
  if module.startswith("model.layers."):
    i, rest = module[len("model.layers."):].split(".", 1)
    return f"blk.{i}.{_GGUF_NAMES[rest]}.{leaf}"
  return f"{_GGUF_NAMES[module]}.{leaf}"


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
  """convert_hf_to_gguf's LlamaModel.permute: rotary halves interleaved per head."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def write_gguf(path, weights, *, arch="llama", skip_metadata=(), extra_tensors=()):
  """Writes `weights` (HF names and layout) as a GGUF file; returns the weights the
  file holds after quantisation, in HF layout."""
  writer = gguf.GGUFWriter(str(path), arch)
  metadata = {"block_count": L, "context_length": 64, "embedding_length": D,
              "feed_forward_length": F, "attention.head_count": N,
              "attention.head_count_kv": K, "rope.dimension_count": H}
  for key, value in metadata.items():
    if key not in skip_metadata:
      writer.add_uint32(f"{arch}.{key}", value)
  writer.add_float32(f"{arch}.rope.freq_base", THETA)
  writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", EPS)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  stored = {}
  for hf, x in weights.items():
    heads = {"q_proj": N, "k_proj": K}.get(hf.split(".")[-2])
    on_file = _llama_cpp_permute(x, heads) if heads else x
    if x.ndim == 2 and hf != F32_MATRIX:
      q8 = quants.quantize(on_file, QType.Q8_0)
      writer.add_tensor(_gguf_name(hf), q8, raw_dtype=QType.Q8_0)
      stored[hf] = quants.dequantize(quants.quantize(x, QType.Q8_0), QType.Q8_0)
    else:
      writer.add_tensor(_gguf_name(hf), on_file)
      stored[hf] = x
  for name, array, qtype in extra_tensors:
    writer.add_tensor(name, array, raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return stored


def reference_logits(w: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """A float64 NumPy Llama forward (rotate-half RoPE, GQA, SwiGLU) of HF-layout weights."""
  w = {k: v.astype(np.float64) for k, v in w.items()}
  rms = lambda x, g: x / np.sqrt(np.mean(x * x, -1, keepdims=True) + EPS) * g
  pos = np.maximum(np.cumsum(mask, -1) - 1, 0)  # left padding
  angles = pos[..., None] * THETA ** (-np.arange(0, H, 2) / H)  # [B, T, H/2]
  cos, sin = (np.concatenate([f(angles)] * 2, -1)[:, :, None] for f in (np.cos, np.sin))
  rope = lambda x: x * cos + np.concatenate([-x[..., H // 2:], x[..., :H // 2]], -1) * sin
  b, t = ids.shape
  allowed = np.tril(np.ones((t, t), bool))[None] & mask.astype(bool)[:, None, :]  # [B, T, S]
  allowed |= np.eye(t, dtype=bool)  # padded rows see themselves: finite, and never read
  x = w["model.embed_tokens.weight"][ids]
  for i in range(L):
    p = lambda name: w[f"model.layers.{i}.{name}.weight"]
    h = rms(x, p("input_layernorm"))
    q = rope((h @ p("self_attn.q_proj").T).reshape(b, t, N, H))
    k = np.repeat(rope((h @ p("self_attn.k_proj").T).reshape(b, t, K, H)), N // K, axis=2)
    v = np.repeat((h @ p("self_attn.v_proj").T).reshape(b, t, K, H), N // K, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(H)
    scores = np.where(allowed[:, None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    x = x + np.einsum("bnts,bsnh->btnh", probs, v).reshape(b, t, N * H) @ p(
        "self_attn.o_proj").T
    h = rms(x, p("post_attention_layernorm"))
    gate = h @ p("mlp.gate_proj").T
    x = x + (gate / (1 + np.exp(-gate)) * (h @ p("mlp.up_proj").T)) @ p("mlp.down_proj").T
  x = rms(x, w["model.norm.weight"])
  return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T


@pytest.mark.parametrize("arch, tied", [("llama", True), ("llama", False), ("mistral", True)])
def test_synthetic_gguf_matches_numpy_reference(tmp_path, arch, tied):
  stored = write_gguf(tmp_path / "tiny.gguf", _hf_weights(tied), arch=arch)
  model, params = jax_attnalign.load_pretrained(tmp_path / "tiny.gguf")
  cfg = model.config
  assert (cfg.model_type, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
          cfg.intermediate_size, cfg.vocab_size) == (arch, L, N, K, H, F, V)
  assert cfg.sliding_window is None  # none in the metadata: full attention, as llama.cpp
  assert (cfg.rope_theta, cfg.tie_word_embeddings, cfg.bos_token_id, cfg.eos_token_id) == (
      THETA, tied, 1, (2,))
  assert ("lm_head" in params) == (not tied)
  rng = np.random.RandomState(1)
  ids = rng.randint(0, V, (3, 13))
  mask = np.ones_like(ids)
  mask[1, :5] = mask[2, :2] = 0
  logits = np.asarray(model.apply({"params": params}, ids, mask).logits)
  valid = mask.astype(bool)
  np.testing.assert_allclose(logits[valid], reference_logits(stored, ids, mask)[valid],
                             atol=1e-4, rtol=1e-4)


def test_a_directory_holding_one_gguf_file_loads_it(tmp_path):
  write_gguf(tmp_path / "m.gguf", _hf_weights(tied=True))
  _, from_dir = jax_attnalign.load_pretrained(tmp_path)
  _, from_file = jax_attnalign.load_pretrained(tmp_path / "m.gguf")
  np.testing.assert_array_equal(from_dir["embed_tokens"]["embedding"],
                                from_file["embed_tokens"]["embedding"])
  write_gguf(tmp_path / "other.gguf", _hf_weights(tied=True))
  with pytest.raises(ValueError, match="several GGUF files.*m.gguf, other.gguf"):
    jax_attnalign.load_pretrained(tmp_path)


@pytest.mark.parametrize("qtype", [QType.Q8_1, QType.I32])
def test_a_type_gguf_cannot_dequantise_is_refused(tmp_path, qtype):
  weights = _hf_weights(tied=True)
  name = "model.layers.0.mlp.up_proj.weight"
  del weights[name]
  block, size = gguf.GGML_QUANT_SIZES[qtype]
  raw = np.zeros((F, D // block * size), np.uint8)
  write_gguf(tmp_path / "q.gguf", weights, extra_tensors=[("blk.0.ffn_up.weight", raw, qtype)])
  with pytest.raises(ValueError, match=rf"q\.gguf.*cannot dequantise.*{qtype.name}: "
                                       r"blk\.0\.ffn_up\.weight.*llama-quantize"):
    jax_attnalign.load_pretrained(tmp_path / "q.gguf")


def test_other_architectures_are_refused(tmp_path):
  write_gguf(tmp_path / "gpt2.gguf", _hf_weights(tied=True), arch="gpt2")
  with pytest.raises(ValueError, match=r"gpt2\.gguf: GGUF architecture 'gpt2' is not "
                                       r"supported.*llama, mistral"):
    jax_attnalign.load_pretrained(tmp_path / "gpt2.gguf")


def test_missing_metadata_and_unknown_tensors_are_named(tmp_path):
  write_gguf(tmp_path / "a.gguf", _hf_weights(tied=True), skip_metadata=("block_count",))
  with pytest.raises(ValueError, match=r"a\.gguf: the GGUF metadata lacks llama\.block_count"):
    jax_attnalign.load_pretrained(tmp_path / "a.gguf")
  write_gguf(tmp_path / "b.gguf", _hf_weights(tied=True),
             extra_tensors=[("rope_freqs.weight", np.ones(H // 2, np.float32), None)])
  with pytest.raises(ValueError, match=r"b\.gguf: tensors with no counterpart.*rope_freqs"):
    jax_attnalign.load_pretrained(tmp_path / "b.gguf")


def test_truncated_and_corrupt_files_are_refused(tmp_path):
  good = tmp_path / "good.gguf"
  write_gguf(good, _hf_weights(tied=True))
  data = good.read_bytes()
  for name, content in [("cut_data.gguf", data[:-100]), ("cut_header.gguf", data[:300])]:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=rf"{name} \(\d+ bytes\) cannot be read as GGUF: "
                                         "the file is truncated or corrupt"):
      jax_attnalign.load_pretrained(tmp_path / name)
  (tmp_path / "magic.gguf").write_bytes(b"PK\x03\x04" + data[4:])
  with pytest.raises(ValueError, match=r"magic\.gguf is not a GGUF file: it starts with "
                                       r"b'PK\\x03\\x04'"):
    jax_attnalign.load_pretrained(tmp_path / "magic.gguf")
  assert good.read_bytes() == data  # reading never writes


def test_llama_cpp_row_order_is_undone():
  """The unpermutation inverts convert_hf_to_gguf's permutation for q (N heads) and
  k (K heads), rows and 1-D biases alike."""
  rng = np.random.RandomState(0)
  for heads in (N, K, 4):
    for shape in [(heads * H, D), (heads * H,)]:
      x = rng.normal(size=shape)
      np.testing.assert_array_equal(
          gguf_io._unpermute_rows(_llama_cpp_permute(x, heads), heads), x)
