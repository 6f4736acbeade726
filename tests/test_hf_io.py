"""HF checkpoint import/export: names and layouts, errors, safetensors, pickles."""

import json
import os

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers

import tiny_hf
from jax_attnalign.models import ModelConfig, build_model, hf_io, safetensors_io

# tiny_hf's decoders have one key/value head; this one has two of three query
# heads each, and head_dim 4 != hidden 18 / 6 heads (transformers 5 insists that
# hidden is a multiple of the heads), so no axis mix-up can hide.
_GQA2 = dict(vocab_size=23, hidden_size=18, num_attention_heads=6, num_key_value_heads=2,
             head_dim=4, intermediate_size=11, num_hidden_layers=2, attention_bias=True)
CASES = sorted(tiny_hf.CASES) + ["llama_gqa2"]
_ATTENTION = {  # HF names of layer 0's q, k, v and output weights, without prefix
    "bert": ("encoder.layer.0.attention.self.{}", ("query", "key", "value"),
             "encoder.layer.0.attention.output.dense"),
    "llama": ("layers.0.self_attn.{}_proj", ("q", "k", "v"), "layers.0.self_attn.o_proj"),
}


def _make(name: str) -> transformers.PreTrainedModel:
  if name != "llama_gqa2":
    return tiny_hf.make(name)
  torch.manual_seed(1)
  config = transformers.LlamaConfig(**_GQA2, attn_implementation="eager")
  return transformers.LlamaForCausalLM(config).eval()


def _expected(config: ModelConfig, task: str):
  model = build_model(config, task)
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])


def _read(path):
  hf_config = safetensors_io.read_config_json(path)
  return (safetensors_io.read_checkpoint_dir(path), ModelConfig.from_hf_config(hf_config),
          hf_io.infer_task(hf_config))


@pytest.fixture(scope="module", params=CASES)
def case(request, tmp_path_factory):
  """(HF model, directory it saved itself to with transformers' save_pretrained)."""
  hf = _make(request.param)
  path = tmp_path_factory.mktemp(request.param)
  hf.save_pretrained(path)
  return hf, path


def test_hf_to_params_layout_and_exact_roundtrip(case):
  hf, path = case
  state, config, task = _read(path)
  expected = _expected(config, task)
  params, new = hf_io.hf_to_params(state, config, task, expected)
  assert not new
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  for p, e in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    assert (p.shape, p.dtype) == (e.shape, e.dtype)

  family = "bert" if config.model_type == "bert" else "llama"
  template, (q, k, v), o = _ATTENTION[family]
  prefix = "" if task == "base" else {"bert": "bert.", "llama": "model."}[family]
  torch_state = {k_: t.numpy() for k_, t in hf.state_dict().items()}
  weight = lambda module, leaf="weight": torch_state[f"{prefix}{module}.{leaf}"]
  attn = params["layers_0"]["attention"]
  n_heads, kv_heads, h = config.num_heads, config.num_kv_heads, config.head_dim
  for n in range(n_heads):
    rows = slice(n * h, (n + 1) * h)
    np.testing.assert_array_equal(attn["query"]["kernel"][:, n, :],
                                  weight(template.format(q))[rows].T)
    np.testing.assert_array_equal(attn["out"]["kernel"][n], weight(o)[:, rows].T)
    if "bias" in attn["query"]:
      np.testing.assert_array_equal(attn["query"]["bias"][n],
                                    weight(template.format(q), "bias")[rows])
  for kv in range(kv_heads):
    rows = slice(kv * h, (kv + 1) * h)
    for ours, theirs in (("key", k), ("value", v)):
      np.testing.assert_array_equal(attn[ours]["kernel"][:, kv, :],
                                    weight(template.format(theirs))[rows].T)

  back = hf_io.params_to_hf(params, config, task)
  assert sorted(back) == sorted(state)  # transformers 5 saves no tied duplicates
  for name, x in state.items():
    assert back[name].dtype == x.dtype and back[name].shape == x.shape, name
    assert back[name].tobytes() == np.asarray(x).tobytes(), name


def test_transformers_loads_our_sharded_export(case, tmp_path):
  hf, path = case
  model, params = hf_io.load_pretrained(path)
  hf_io.save_pretrained(model, params, tmp_path, max_shard_bytes=4000)
  shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
  assert len(shards) > 1 and "model.safetensors.index.json" in os.listdir(tmp_path)
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
  arch = hf_io.architecture_name(model.config, model.task)
  assert arch == type(hf).__name__
  reloaded, info = getattr(transformers, arch).from_pretrained(
      tmp_path, output_loading_info=True, attn_implementation="eager")
  assert not any(info.values()), info
  theirs = reloaded.state_dict()
  assert sorted(theirs) == sorted(hf.state_dict())
  for name, x in hf.state_dict().items():
    assert torch.equal(theirs[name], x), name
  assert reloaded.config.num_labels == hf.config.num_labels


def test_bf16_params_export_matches_torch_rounding(tmp_path):
  hf = tiny_hf.make("llama")
  hf.save_pretrained(tmp_path / "f32")
  model, params = hf_io.load_pretrained(tmp_path / "f32", dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  hf_io.save_pretrained(model, params, tmp_path / "bf16")
  with open(tmp_path / "bf16" / "config.json") as f:
    assert json.load(f)["dtype"] == "bfloat16"
  ours = safetensors.torch.load_file(tmp_path / "bf16" / "model.safetensors")
  for name, x in hf.to(torch.bfloat16).state_dict().items():
    assert torch.equal(ours[name], x), name


def test_missing_heads_are_initialised_and_reported(tmp_path, caplog):
  path = tmp_path / "bert"
  tiny_hf.make("bert").save_pretrained(path)  # a bare BertModel: no task heads
  state, config, _ = _read(path)
  cls_config = config.replace(num_labels=4)
  _, new = hf_io.hf_to_params(state, cls_config, "classification",
                              _expected(cls_config, "classification"))
  assert sorted(new) == ["classifier/bias", "classifier/kernel"]
  _, base = hf_io.load_pretrained(path)
  with caplog.at_level("WARNING"):
    model, params = hf_io.load_pretrained(path, task="classification", num_labels=4)
  assert "classifier/kernel" in caplog.text
  assert model.config.num_labels == 4 and params["classifier"]["kernel"].shape == (35, 4)
  assert np.abs(params["classifier"]["kernel"]).max() > 0
  np.testing.assert_array_equal(params["layers_1"]["mlp"]["output"]["kernel"],
                                base["layers_1"]["mlp"]["output"]["kernel"])
  with caplog.at_level("WARNING"):  # no pooler in BertForMaskedLM: dropped, not an error
    model, params = hf_io.load_pretrained(path, task="masked_lm")
  assert "pooler.dense.weight" in caplog.text and "pooler" not in params
  assert params["mlm"]["bias"].shape == (tiny_hf.VOCAB,)


def test_real_minilm_checkpoint(minilm_path):
  path = minilm_path
  state = safetensors_io.read_checkpoint_dir(path)
  assert "embeddings.position_ids" in state  # an old buffer, ignored
  model, params = hf_io.load_pretrained(path)
  assert model.task == "base" and model.config.num_heads == 12
  np.testing.assert_array_equal(params["layers_5"]["attention"]["value"]["kernel"][:, 11],
                                state["encoder.layer.5.attention.self.value.weight"][-32:].T)


def _bert_cls_state():
  hf = tiny_hf.make("bert_cls")
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  config = ModelConfig.from_hf_config(hf.config)
  return state, config, _expected(config, "classification")


def test_missing_tensor_is_named():
  state, config, expected = _bert_cls_state()
  del state["bert.encoder.layer.1.output.dense.weight"]
  with pytest.raises(ValueError, match=r"Missing tensors: bert\.encoder\.layer\.1\.output"
                                       r"\.dense\.weight"):
    hf_io.hf_to_params(state, config, "classification", expected)


def test_unexpected_tensor_is_named():
  state, config, expected = _bert_cls_state()
  state["bert.encoder.layer.2.output.dense.weight"] = np.zeros((35, 37), np.float32)
  with pytest.raises(ValueError, match=r"Unexpected tensors: bert\.encoder\.layer\.2"):
    hf_io.hf_to_params(state, config, "classification", expected)


def test_misshaped_tensor_names_shapes_and_config():
  state, config, expected = _bert_cls_state()
  name = "bert.encoder.layer.0.attention.self.query.weight"
  state[name] = state[name][:-1]
  with pytest.raises(ValueError, match=rf"{name}: found \(34, 35\), expected \(35, 35\)"
                                       r".*config\.json"):
    hf_io.hf_to_params(state, config, "classification", expected)


def test_unknown_model_type(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 8}))
  safetensors_io.write_safetensors(tmp_path / "model.safetensors", {"w": np.zeros(2)})
  with pytest.raises(ValueError, match="Unknown model_type 'gpt2'"):
    hf_io.load_pretrained(tmp_path)


def test_missing_config_or_weights_lists_directory(tmp_path):
  (tmp_path / "notes.txt").write_text("hi")
  with pytest.raises(FileNotFoundError, match="No config.json.*notes.txt"):
    safetensors_io.read_config_json(tmp_path)
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="No weights.*config.json, notes.txt"):
    safetensors_io.read_checkpoint_dir(tmp_path)


_UNPICKLED = []


def _record(tag):
  _UNPICKLED.append(tag)
  return tag


class _Payload:
  """Unpickling this calls `_record`: a stand-in for code hidden in a checkpoint."""

  def __reduce__(self):
    return (_record, ("payload ran",))


def test_pickle_checkpoint_needs_opt_in_and_weights_only(tmp_path):
  hf = tiny_hf.make("bert_cls")
  hf.save_pretrained(tmp_path / "safe")
  pickled = tmp_path / "pickled"
  pickled.mkdir()
  (pickled / "config.json").write_text((tmp_path / "safe" / "config.json").read_text())
  torch.save(hf.state_dict(), pickled / "pytorch_model.bin")
  with pytest.raises(ValueError, match="allow_pickle=True"):
    hf_io.load_pretrained(pickled)
  _, params = hf_io.load_pretrained(pickled, allow_pickle=True)
  _, reference = hf_io.load_pretrained(tmp_path / "safe")
  jax.tree.map(np.testing.assert_array_equal, params, reference)

  weights = torch.randn(3, 5).to(torch.bfloat16)
  torch.save({"w": weights}, pickled / "pytorch_model.bin")
  w = safetensors_io.read_checkpoint_dir(pickled, allow_pickle=True)["w"]
  assert w.dtype == ml_dtypes.bfloat16
  assert w.tobytes() == weights.view(torch.int16).numpy().tobytes()

  torch.save({"w": weights, "x": _Payload()}, pickled / "pytorch_model.bin")
  with pytest.raises(ValueError, match="weights_only=True"):
    safetensors_io.read_checkpoint_dir(pickled, allow_pickle=True)
  assert not _UNPICKLED
  torch.load(pickled / "pytorch_model.bin", weights_only=False)  # the file is live
  assert _UNPICKLED == ["payload ran"]


def test_safetensors_dtypes_roundtrip_bitwise(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {
      "bf16": rng.normal(size=(7, 3)).astype(ml_dtypes.bfloat16),
      "f16": rng.normal(size=(5,)).astype(np.float16),
      "f32": rng.normal(size=(2, 3, 5)).astype(np.float32),
      "i64": np.arange(11, dtype=np.int64), "i32": np.arange(-3, 4, dtype=">i4"),
      "bool": np.array(True), "empty": np.zeros((0, 3), np.float32),
  }
  path = tmp_path / "x.safetensors"
  safetensors_io.write_safetensors(path, tensors, metadata={"note": "hi"})
  ours = safetensors_io.read_safetensors(path)
  theirs = safetensors.torch.load_file(path)  # the reference reader agrees
  for name, x in tensors.items():
    assert ours[name].shape == x.shape and ours[name].dtype == x.dtype.newbyteorder("=")
    assert ours[name].tobytes() == x.astype(x.dtype.newbyteorder("<")).tobytes()
  assert theirs["bf16"].dtype == torch.bfloat16
  assert theirs["bf16"].view(torch.int16).numpy().tobytes() == tensors["bf16"].tobytes()
  np.testing.assert_array_equal(theirs["i32"].numpy(), tensors["i32"])

  torch_bf16 = torch.randn(4, 6).to(torch.bfloat16)  # and ours reads torch's bf16
  safetensors.torch.save_file({"t": torch_bf16}, tmp_path / "t.safetensors")
  t = safetensors_io.read_safetensors(tmp_path / "t.safetensors")["t"]
  assert t.dtype == ml_dtypes.bfloat16
  assert t.tobytes() == torch_bf16.view(torch.int16).numpy().tobytes()


def test_sharded_write_read_and_atomic_replace(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  tensors = {f"t{i}": rng.normal(size=(i + 1, 7)).astype(np.float32) for i in range(9)}
  files = safetensors_io.write_checkpoint_dir(tmp_path, tensors, max_shard_bytes=200)
  assert sorted(os.listdir(tmp_path)) == sorted(files)
  assert len(files) > 3 and "model-00001-of-" in files[0]
  back = safetensors_io.read_checkpoint_dir(tmp_path)
  assert list(back) == list(tensors)
  jax.tree.map(np.testing.assert_array_equal, back, tensors)

  # A failure half-way through leaves the previous checkpoint as it was.
  write = safetensors_io.write_safetensors
  calls = []

  def fail_second(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise OSError("disk full")
    write(*args, **kwargs)

  monkeypatch.setattr(safetensors_io, "write_safetensors", fail_second)
  before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
  doubled = {k: 2 * v for k, v in tensors.items()}
  with pytest.raises(OSError, match="disk full"):
    safetensors_io.write_checkpoint_dir(tmp_path, doubled, max_shard_bytes=400)
  assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before
  monkeypatch.undo()

  # One file replaces the shards, and the stale shards are gone.
  assert safetensors_io.write_checkpoint_dir(tmp_path, doubled) == ["model.safetensors"]
  assert os.listdir(tmp_path) == ["model.safetensors"]
  jax.tree.map(np.testing.assert_array_equal,
               safetensors_io.read_checkpoint_dir(tmp_path), doubled)


@pytest.mark.parametrize("architectures, model_type, task", [
    (["BertModel"], "bert", "base"),
    (["BertForSequenceClassification"], "bert", "classification"),
    (["BertForMaskedLM"], "bert", "masked_lm"),
    (["BertForPreTraining"], "bert", "masked_lm"),
    (None, "bert", "base"),
    (["LlamaModel"], "llama", "base"),
    (["LlamaForCausalLM"], "llama", "causal_lm"),
    (["MistralForCausalLM"], "mistral", "causal_lm"),
    (["MistralForSequenceClassification"], "mistral", "classification"),
    (None, "llama", "causal_lm"),
])
def test_infer_task(architectures, model_type, task):
  hf_config = {"model_type": model_type, "architectures": architectures}
  assert hf_io.infer_task(hf_config) == task
  if architectures:
    config = ModelConfig(model_type, 11, 8, 1, 2, 5)  # head_dim 4: even, as RoPE needs
    assert hf_io.architecture_name(config, task) == architectures[0].replace(
        "ForPreTraining", "ForMaskedLM")


def test_unsupported_architecture_and_task():
  with pytest.raises(ValueError, match="task="):
    hf_io.infer_task({"model_type": "bert", "architectures": ["BertForTokenClassification"]})
  with pytest.raises(ValueError, match="not available for bert"):
    hf_io.architecture_name(ModelConfig("bert", 11, 6, 1, 2, 5), "causal_lm")


def test_unreachable_hub_id_names_the_fix(monkeypatch):
  import huggingface_hub
  def offline(*args, **kwargs):
    raise ConnectionError("hub unreachable")
  monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
  with pytest.raises(FileNotFoundError, match="local checkpoint directory"):
    hf_io.load_pretrained("meta-llama/Llama-2-7b-hf")


def _files(path) -> dict:
  return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture()
def saved_llama(tmp_path):
  """(model, params, out): a tiny Llama loaded back, and a checkpoint of it at out."""
  tiny_hf.make("llama").save_pretrained(tmp_path / "hf")
  model, params = hf_io.load_pretrained(tmp_path / "hf")
  out = tmp_path / "out"
  hf_io.save_pretrained(model, params, out)
  return model, params, out


def test_save_refuses_params_that_do_not_fit_and_writes_nothing(saved_llama):
  model, params, out = saved_llama
  before, siblings = _files(out), sorted(os.listdir(out.parent))
  flat = flax.traverse_util.flatten_dict(params)
  query = ("layers_1", "attention", "query", "kernel")
  bad = {
      "missing: layers_1/mlp/up/kernel": {k: v for k, v in flat.items()
                                          if k != ("layers_1", "mlp", "up", "kernel")},
      "unexpected: layers_2/input_norm/scale": {
          **flat, ("layers_2", "input_norm", "scale"): flat[("layers_1", "input_norm", "scale")]},
      r"mis-shaped: layers_1/attention/query/kernel \(33, 3, 9\) \(expected \(33, 3, 10\)\)": {
          **flat, query: flat[query][..., :-1]},
      r"not floating point: norm/scale \(int32\)": {
          **flat, ("norm", "scale"): flat[("norm", "scale")].astype(jnp.int32)},
  }
  for message, tree in bad.items():
    with pytest.raises(ValueError, match=message):
      hf_io.save_pretrained(model, flax.traverse_util.unflatten_dict(tree), out)
    assert _files(out) == before and sorted(os.listdir(out.parent)) == siblings

  class BigTokenizer:
    def __len__(self):
      return model.config.vocab_size + 1
  with pytest.raises(ValueError, match="tokenizer has 98 tokens but the model's vocabulary"):
    hf_io.save_pretrained(model, params, out, tokenizer=BigTokenizer())
  assert _files(out) == before

  other = out.parent / "notes"
  other.mkdir()
  (other / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="notes exists and is not a checkpoint folder"):
    hf_io.save_pretrained(model, params, other)
  assert _files(other) == {"keep.txt": b"mine"}


def test_save_replaces_a_checkpoint_only_when_complete(saved_llama, monkeypatch):
  model, params, out = saved_llama
  before, siblings = _files(out), sorted(os.listdir(out.parent))
  changed = jax.tree.map(lambda x: x + 1.0, params)

  class FailingTokenizer:  # fails after weights and config are written
    def __len__(self):
      return 10

    def save_pretrained(self, directory):
      (directory / "tokenizer.json").write_text("{")
      raise OSError("disk full")
  with pytest.raises(OSError, match="disk full"):
    hf_io.save_pretrained(model, changed, out, tokenizer=FailingTokenizer())
  assert _files(out) == before and sorted(os.listdir(out.parent)) == siblings

  rename, calls = os.rename, []

  def fail_second(src, dst):  # the new folder cannot be moved into place
    calls.append(dst)
    if len(calls) == 2:
      raise OSError("rename failed")
    rename(src, dst)
  monkeypatch.setattr(hf_io.os, "rename", fail_second)
  with pytest.raises(OSError, match="rename failed"):
    hf_io.save_pretrained(model, changed, out)
  monkeypatch.undo()
  assert _files(out) == before and sorted(os.listdir(out.parent)) == siblings

  hf_io.save_pretrained(model, params, out, max_shard_bytes=4000)
  assert len([f for f in os.listdir(out) if f.endswith(".safetensors")]) > 1
  hf_io.save_pretrained(model, changed, out)  # one file replaces the shards, nothing stale
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  _, back = hf_io.load_pretrained(out)
  jax.tree.map(np.testing.assert_array_equal, back, changed)
