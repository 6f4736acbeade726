"""What bad input does besides raising (tests/bad_inputs.py has the errors): NaN scores
are flagged, checkify mode inside jit, non-finite weights reported, interrupted saves
lose nothing (checkpoints and JSON), a corrupt orbax step falls back, an [UNK] trigger warns."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jax_attnalign import ModelConfig, build_model, generate, validation
from jax_attnalign.checkpoint import Checkpointer
from jax_attnalign.data.files import write_json, write_npz
from jax_attnalign.defense import Detector
from jax_attnalign.errors import InputError
from jax_attnalign.models import hf_io, safetensors_io

IDS = jnp.array([[1, 5, 6, 7, 2]])


@pytest.fixture(scope="module")
def bert():
  model = build_model(ModelConfig.preset("tiny-bert"), "classification")
  return model, model.init(jax.random.key(0), IDS)["params"]


def _flat(params) -> dict:
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def test_a_nan_score_is_flagged_and_logged(caplog):
  detector = Detector(view="cls_row", statistic="mean", fpr=0.05, threshold=0.9,
                      clean_count=256, clean_mean=0.7, clean_std=0.1)
  with caplog.at_level(logging.WARNING):
    flags = detector.flag(np.array([0.5, np.nan, np.inf, 0.95]))
  assert flags.tolist() == [False, True, True, True]
  assert "2 of 4 scores are not finite (inputs [1, 2])" in caplog.text


def test_out_of_range_ids_are_nan_under_jit_and_checkify_names_them(bert):
  model, params = bert
  forward = jax.jit(lambda p, i: model.apply({"params": p}, i).logits)
  for bad in (-1, 64):  # a negative id no longer reads another token's row
    assert np.isnan(forward(params, IDS.at[0, 2].set(bad))).all()
  assert np.isfinite(validation.checked(forward)(params, IDS)).all()
  with pytest.raises(InputError, match="out-of-bounds indexing"):
    validation.checked(forward)(params, IDS.at[0, 2].set(-1))


def test_temperature_zero_is_greedy():
  model = build_model(ModelConfig.preset("tiny-llama"))
  params = model.init(jax.random.key(0), IDS)["params"]
  greedy = generate(model, params, IDS, max_new_tokens=4)
  cold = generate(model, params, IDS, max_new_tokens=4, do_sample=True,
                  rng=jax.random.key(1), temperature=0.0)
  np.testing.assert_array_equal(cold.tokens, greedy.tokens)


def test_non_finite_weights_are_reported_on_load(bert, tmp_path, caplog):
  model, params = bert
  broken = jax.tree_util.tree_map(lambda x: x, params)
  broken["pooler"]["bias"] = broken["pooler"]["bias"].at[0].set(jnp.nan)
  hf_io.save_pretrained(model, broken, tmp_path / "ckpt")
  with caplog.at_level(logging.WARNING):
    hf_io.load_pretrained(tmp_path / "ckpt")
  assert "non-finite weights" in caplog.text and "pooler/bias" in caplog.text


_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import jax
    from jax_attnalign import ModelConfig, build_model
    from jax_attnalign.models import hf_io, safetensors_io

    def write_half_then_die(path, tensors, metadata=None):
      with open(path, "wb") as f:
        f.write(b"\\0" * 64)
        f.flush()
      os.kill(os.getpid(), signal.SIGKILL)

    model = build_model(ModelConfig.preset("tiny-bert"), "classification")
    params = model.init(jax.random.key(7), jax.numpy.ones((1, 5), "int32"))["params"]
    safetensors_io.write_safetensors = write_half_then_die
    hf_io.save_pretrained(model, params, sys.argv[1])
""")


def test_a_save_killed_mid_write_leaves_the_old_checkpoint(bert, tmp_path):
  model, params = bert
  out = tmp_path / "ckpt"
  hf_io.save_pretrained(model, params, out)
  run = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(out)], capture_output=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
  assert run.returncode == -9, run.stderr.decode()[-2000:]
  assert list(tmp_path.glob(".ckpt.tmp-*"))  # the killed save's half-written folder
  _, loaded = hf_io.load_pretrained(out)
  for path, value in _flat(params).items():
    np.testing.assert_array_equal(_flat(loaded)[path], value)
  hf_io.save_pretrained(model, params, out)  # the next save cleans up after it
  assert not list(tmp_path.glob(".ckpt.tmp-*"))


def test_a_save_failing_halfway_keeps_the_old_checkpoint(bert, tmp_path, monkeypatch):
  model, params = bert
  out = tmp_path / "ckpt"
  hf_io.save_pretrained(model, params, out)
  before = {p.name: p.read_bytes() for p in out.iterdir()}

  def fail_halfway(path, tensors, metadata=None):
    with open(path, "wb") as f:
      f.write(b"\0" * 64)
    raise OSError("disk full")

  monkeypatch.setattr(safetensors_io, "write_safetensors", fail_halfway)
  other = jax.tree_util.tree_map(lambda x: x + 1.0, params)
  with pytest.raises(OSError, match="disk full"):
    hf_io.save_pretrained(model, other, out)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_save_killed_between_the_renames_says_where_the_old_one_is(bert, tmp_path):
  model, params = bert
  out = tmp_path / "ckpt"
  hf_io.save_pretrained(model, params, out)
  os.rename(out, tmp_path / ".ckpt.old-1234abcd")
  with pytest.raises(FileNotFoundError, match=r"\.ckpt\.old-1234abcd"):
    hf_io.load_pretrained(out)


def test_a_corrupt_latest_orbax_step_falls_back_to_the_one_before(tmp_path, caplog):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, {"w": np.ones(3, np.float32)}, metadata={"step": 1})
    ckpt.save(2, {"w": np.full(3, 2.0, np.float32)}, metadata={"step": 2})
  for path in (tmp_path / "2").rglob("*"):
    if path.is_file():
      path.write_bytes(b"\0garbage")
  with caplog.at_level(logging.WARNING), Checkpointer(tmp_path) as ckpt:
    state, meta = ckpt.restore(target={"w": np.zeros(3, np.float32)})
  assert meta == {"step": 1} and np.asarray(state["w"]).tolist() == [1.0, 1.0, 1.0]
  assert f"{tmp_path / '2'}" in caplog.text


def test_a_trigger_word_the_tokenizer_cannot_spell_warns(caplog):
  from jax_attnalign.assets import bundled_minilm_path
  from jax_attnalign.data import load_tokenizer, unknown_words
  tokenizer = load_tokenizer(bundled_minilm_path())
  with caplog.at_level(logging.WARNING):
    assert unknown_words(["cf", "\u16a0\u16a2"], tokenizer) == ["\u16a0\u16a2"]
  assert "unknown token" in caplog.text


def _read_npz(path):
  with np.load(path, allow_pickle=False) as stored:
    return {k: stored[k].item() for k in stored.files}


@pytest.mark.parametrize("write, read", [
    (write_json, lambda path: json.loads(path.read_text())),
    (lambda path, value: write_npz(path, **value), _read_npz)])
def test_a_file_write_failing_before_its_rename_keeps_the_old_file(tmp_path, monkeypatch, write,
                                                                    read):
  path = tmp_path / "run" / "result"
  write(path, {"asr": 0.5})
  assert read(path) == {"asr": 0.5}

  def disk_full(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", disk_full)
  with pytest.raises(OSError, match="disk full"):
    write(path, {"asr": 0.1})
  assert read(path) == {"asr": 0.5}  # a reader still sees the finished run
