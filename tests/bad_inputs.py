"""Bad inputs and the error each must give: (case, call, error type, text the message names).

Read at a glance: each row is one bad input to a public entry point; `names` is
the argument or the file the message must name ({tmp} is the test's folder).
`tests/test_bad_inputs.py` runs every row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import struct
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jax_attnalign import ModelConfig, generate
from jax_attnalign.analysis import (classify_heads, head_importance, safety_scores,
                                    streaming_head_similarity)
from jax_attnalign.checkpoint import Checkpointer
from jax_attnalign.data import load_classification, load_instructions
from jax_attnalign.defense import (Alignment, Detector, DetectorConfig, FineTuning,
                                   HeadClassification, HeadRates, SanitizeConfig, Stopping,
                                   calibrate_detector, input_scores, sanitize, scores_of)
from jax_attnalign.defense.headwise import learning_rates
from jax_attnalign.errors import CheckpointError, DataFileError, InputError, NonFiniteError
from jax_attnalign.harness.victims import VictimConfig
from jax_attnalign.harness.victims_lm import LMVictimConfig
from jax_attnalign.models import apply_batch, run_with_hooks, scale_heads
from jax_attnalign.models import gguf_io, hf_io, safetensors_io
from jax_attnalign.train import predict_logits


@dataclasses.dataclass
class Env:
  """What the calls need: tiny models (vocabulary 64, BERT position table 16) and a folder."""
  bert: Any
  bert_params: Any
  llama: Any
  llama_params: Any
  tmp: pathlib.Path

  def batch(self, **changes) -> dict:
    """Two encoded inputs; given input_ids alone get a mask of ones."""
    ids = changes.get("input_ids", np.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]], np.int32))
    mask = np.ones(np.shape(ids), np.int32) if "input_ids" in changes else np.sign(ids)
    return {"input_ids": ids, "attention_mask": mask.astype(np.int32), **changes}

  def ids(self, *values) -> np.ndarray:
    return np.array([[1, 5, 6, *values]], np.int32)

  def file(self, name: str, data: bytes | str) -> pathlib.Path:
    path = self.tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path

  def checkpoint(self, config: dict | None = None, tensors: dict | None = None) -> pathlib.Path:
    """A tiny BERT checkpoint in {tmp}/ckpt, its config.json or tensors replaced."""
    folder = self.tmp / "ckpt"
    hf_io.save_pretrained(self.bert, self.bert_params, folder)
    if config is not None:
      (folder / "config.json").write_text(json.dumps(config))
    if tensors is not None:
      state = {**safetensors_io.read_safetensors(folder / "model.safetensors"), **tensors}
      safetensors_io.write_safetensors(folder / "model.safetensors.new", state)
      os.replace(folder / "model.safetensors.new", folder / "model.safetensors")
    return folder

  def hf_config(self, **changes) -> dict:
    config = json.loads((self.checkpoint() / "config.json").read_text())
    return {k: v for k, v in {**config, **changes}.items() if v is not _DROP}

  def sharded(self, weight_map: Any) -> pathlib.Path:
    folder = self.checkpoint()
    os.rename(folder / "model.safetensors", folder / "model-00001-of-00001.safetensors")
    (folder / safetensors_io.SAFE_INDEX).write_text(json.dumps({"weight_map": weight_map}))
    return folder


_DROP = object()


def safetensors_bytes(header: Any, data: bytes = b"", length: int | None = None) -> bytes:
  text = header if isinstance(header, bytes) else json.dumps(header).encode()
  return struct.pack("<Q", len(text) if length is None else length) + text + data


def _detector(**changes) -> Detector:
  fields = dict(view="cls_row", statistic="mean", fpr=0.05, threshold=0.9, clean_count=256,
                clean_mean=0.7, clean_std=0.1)
  return Detector(**{**fields, **changes})


def _nan_params(params):
  return jax.tree_util.tree_map(lambda x: jnp.full_like(x, jnp.nan), params)


def _tiny_sanitize(env: Env, suspects: dict, clean: dict, **kwargs):
  config = SanitizeConfig(classify=HeadClassification(view="cls_row"), stages=("align",),
                          align=Alignment(steps=1, batch_size=2),
                          stopping=Stopping(stop="fixed", max_rounds=1))
  params = kwargs.pop("params", env.bert_params)
  return sanitize(env.bert, params, suspects, clean, config, **kwargs)


def _corrupt_orbax_step(env: Env):
  with Checkpointer(env.tmp / "orbax") as ckpt:
    ckpt.save(1, {"w": np.ones(3, np.float32)})
  for path in (env.tmp / "orbax" / "1").rglob("*"):
    if path.is_file():
      path.write_bytes(b"\0garbage")
  with Checkpointer(env.tmp / "orbax") as ckpt:
    ckpt.restore(target={"w": np.ones(3, np.float32)})


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  call: Callable[[Env], Any]
  error: type
  names: str  # what the message must name: the argument, or the file ({tmp})


OUT = "input_ids holds ids outside"  # the message of an id outside [0, vocab)
B = lambda e, **kw: apply_batch(e.bert, e.bert_params, e.batch(**kw))  # noqa: E731
CASES = [
    # Inputs of a forward pass (apply_batch and every entry point built on it).
    Case("id equal to the vocabulary size", lambda e: B(e, input_ids=e.ids(64, 2, 0)),
         InputError, OUT),
    Case("negative id", lambda e: B(e, input_ids=e.ids(-1, 2, 0)),
         InputError, OUT),
    Case("float ids", lambda e: B(e, input_ids=e.batch()["input_ids"] * 1.0),
         InputError, "input_ids must hold integers"),
    Case("bool ids", lambda e: B(e, input_ids=e.batch()["input_ids"] > 0),
         InputError, "input_ids must hold integers"),
    Case("ids without a batch axis", lambda e: B(e, input_ids=np.arange(6)),
         InputError, "input_ids must have 2 axes"),
    Case("empty batch", lambda e: B(e, input_ids=np.zeros((0, 6), np.int32),
                                    attention_mask=np.zeros((0, 6), np.int32)),
         InputError, "input_ids is empty"),
    Case("zero-length inputs", lambda e: B(e, input_ids=np.zeros((2, 0), np.int32),
                                           attention_mask=np.zeros((2, 0), np.int32)),
         InputError, "input_ids is empty"),
    Case("longer than the position table", lambda e: B(
        e, input_ids=np.ones((1, 17), np.int32), attention_mask=np.ones((1, 17), np.int32)),
         InputError, "position table"),
    Case("mask of another shape", lambda e: B(e, attention_mask=np.ones((2, 5), np.int32)),
         InputError, "attention_mask"),
    Case("mask of floats", lambda e: B(e, attention_mask=np.ones((2, 6))),
         InputError, "attention_mask"),
    Case("mask value 2", lambda e: B(e, attention_mask=np.full((2, 6), 2, np.int32)),
         InputError, "attention_mask"),
    Case("token type out of range", lambda e: B(e, token_type_ids=np.full((2, 6), 2)),
         InputError, "token_type_ids"),
    Case("negative token type", lambda e: B(e, token_type_ids=np.full((2, 6), -1)),
         InputError, "token_type_ids"),
    Case("token types to a decoder", lambda e: apply_batch(
        e.llama, e.llama_params, e.batch(token_type_ids=np.zeros((2, 6), np.int32))),
         InputError, "token_type_ids"),
    Case("no attention_mask", lambda e: apply_batch(
        e.bert, e.bert_params, {"input_ids": e.batch()["input_ids"]}),
         InputError, "attention_mask"),
    Case("a list instead of a batch dict", lambda e: apply_batch(
        e.bert, e.bert_params, [e.batch()["input_ids"]]), InputError, "dict"),
    Case("label outside the classes", lambda e: B(e, labels=np.array([0, 2])),
         InputError, "labels"),
    Case("labels of another length", lambda e: B(e, labels=np.array([0, 1, 1])),
         InputError, "labels"),
    Case("special_mask of another shape", lambda e: B(e, special_mask=np.ones((2, 5))),
         InputError, "special_mask"),
    Case("run_with_hooks: id out of range", lambda e: run_with_hooks(
        e.bert, e.bert_params, e.batch(input_ids=e.ids(99, 2, 0)), capture="*"),
         InputError, OUT),
    Case("scale_heads: gates for fewer layers", lambda e: run_with_hooks(
        e.bert, e.bert_params, e.batch(), edit=scale_heads(
            jnp.ones((1, e.bert.config.num_heads)))), InputError, "[num_layers, num_heads]"),
    Case("scale_heads: gates for other heads", lambda e: run_with_hooks(
        e.bert, e.bert_params, e.batch(), edit=scale_heads(
            jnp.ones((e.bert.config.num_layers, 3)))), InputError, "scale_heads: gates"),
    Case("predict_logits: id out of range", lambda e: predict_logits(
        e.bert, e.bert_params, e.batch(input_ids=e.ids(64, 2, 0))),
         InputError, "predict_logits: " + OUT),
    Case("predict_logits: no inputs", lambda e: predict_logits(
        e.bert, e.bert_params, e.batch(input_ids=np.zeros((0, 6), np.int32),
                                       attention_mask=np.zeros((0, 6), np.int32))),
         InputError, "predict_logits: input_ids is empty"),
    # Generation.
    Case("generate: id out of range", lambda e: generate(
        e.llama, e.llama_params, e.ids(70), max_new_tokens=2), InputError, OUT),
    Case("generate: float prompt", lambda e: generate(
        e.llama, e.llama_params, e.ids(7) * 1.0, max_new_tokens=2),
         InputError, "input_ids must hold integers"),
    Case("generate: negative temperature", lambda e: generate(
        e.llama, e.llama_params, e.ids(7), max_new_tokens=2, do_sample=True,
        rng=jax.random.key(0), temperature=-1.0), ValueError, "temperature"),
    Case("generate: NaN temperature", lambda e: generate(
        e.llama, e.llama_params, e.ids(7), max_new_tokens=2, temperature=float("nan")),
         ValueError, "temperature"),
    Case("generate: top_p 0", lambda e: generate(
        e.llama, e.llama_params, e.ids(7), max_new_tokens=2, top_p=0.0), ValueError, "top_p"),
    Case("generate: max_new_tokens 0", lambda e: generate(
        e.llama, e.llama_params, e.ids(7), max_new_tokens=0), ValueError, "max_new_tokens"),
    Case("generate: mask of another shape", lambda e: generate(
        e.llama, e.llama_params, e.ids(7), np.ones((1, 3), np.int32), max_new_tokens=1),
         InputError, "attention_mask"),
    # Analysis and detection.
    Case("streaming similarity: id out of range", lambda e: streaming_head_similarity(
        e.bert, e.bert_params, e.ids(64, 2), np.ones((1, 5), np.int32), "cls_row"),
         InputError, OUT),
    Case("head_importance: id out of range", lambda e: head_importance(
        e.bert, e.bert_params, e.batch(input_ids=e.ids(64, 2, 0)), use_predictions=True),
         InputError, OUT),
    Case("head_importance: no real example", lambda e: head_importance(
        e.bert, e.bert_params, e.batch(attention_mask=np.zeros((2, 6), np.int32)),
        use_predictions=True), InputError, "head_importance"),
    Case("head_importance: NaN weights", lambda e: head_importance(
        e.bert, _nan_params(e.bert_params), e.batch(), use_predictions=True),
         NonFiniteError, "head_importance"),
    Case("input_scores: id out of range", lambda e: input_scores(
        e.bert, e.bert_params, e.batch(input_ids=e.ids(64, 2, 0)), "cls_row"),
         InputError, OUT),
    Case("input_scores: unknown statistic", lambda e: input_scores(
        e.bert, e.bert_params, e.batch(), "cls_row", "median"), ValueError, "statistic"),
    Case("scores_of: mask of another shape", lambda e: scores_of(
        e.bert, e.bert_params, e.batch(attention_mask=np.ones((2, 4), np.int32)),
        "cls_row", "mean"), InputError, "attention_mask"),
    Case("scores_of: prompt_lengths past the row", lambda e: scores_of(
        e.bert, e.bert_params, e.batch(prompt_lengths=np.array([3, 9])), "cls_row", "mean"),
         InputError, "prompt_lengths"),
    Case("calibration: a NaN score", lambda e: calibrate_detector(
        np.array([0.1, np.nan, 0.3]), view="cls_row"), NonFiniteError, "clean_scores"),
    Case("calibration: an infinite score", lambda e: calibrate_detector(
        np.array([0.1, np.inf, 0.3]), view="cls_row"), NonFiniteError, "clean_scores"),
    Case("calibration: one score", lambda e: calibrate_detector(
        np.array([0.1]), view="cls_row"), ValueError, "clean_scores"),
    Case("calibration: fpr 0", lambda e: calibrate_detector(
        np.arange(5.0), view="cls_row", fpr=0.0), ValueError, "fpr"),
    Case("calibration: unknown view", lambda e: calibrate_detector(
        np.arange(5.0), view="cls"), ValueError, "Detector.view"),
    Case("detector: NaN threshold", lambda e: _detector(threshold=float("nan")),
         ValueError, "Detector.threshold"),
    Case("detector: one clean input", lambda e: _detector(clean_count=1),
         ValueError, "Detector.clean_count"),
    Case("detector: unknown statistic", lambda e: _detector(statistic="max"),
         ValueError, "Detector.statistic"),
    Case("Detector.load: not JSON", lambda e: Detector.load(e.file("d.json", "{not json")),
         CheckpointError, "{tmp}/d.json"),
    Case("Detector.load: a JSON list", lambda e: Detector.load(e.file("d.json", "[1, 2]")),
         CheckpointError, "{tmp}/d.json"),
    Case("Detector.load: missing fields", lambda e: Detector.load(
        e.file("d.json", '{"view": "cls_row"}')), CheckpointError, "{tmp}/d.json"),
    Case("Detector.load: fpr 7", lambda e: Detector.load(e.file("d.json", json.dumps(
        {**dataclasses.asdict(_detector()), "fpr": 7}))), CheckpointError, "{tmp}/d.json"),
    Case("Detector.load: binary bytes", lambda e: Detector.load(e.file("d.json", b"\xff\xfe")),
         CheckpointError, "{tmp}/d.json"),
    # Sanitisation.
    Case("sanitize: no suspects", lambda e: _tiny_sanitize(
        e, e.batch(input_ids=np.zeros((0, 6), np.int32)), e.batch()),
         InputError, "suspect_inputs"),
    Case("sanitize: clean id out of range", lambda e: _tiny_sanitize(
        e, e.batch(), e.batch(input_ids=e.ids(64, 2, 0), labels=np.array([1]))),
         InputError, "clean_data: input_ids"),
    Case("sanitize: NaN weights stop the round", lambda e: _tiny_sanitize(
        e, e.batch(), e.batch(labels=np.array([0, 1])), params=_nan_params(e.bert_params),
        detector=_detector()), NonFiniteError, "head similarity"),
    # Configs.
    Case("victim: target outside the label set", lambda e: VictimConfig(target=2),
         ValueError, "target must be a label id of sst2"),
    Case("victim: unknown dataset", lambda e: VictimConfig(dataset="sst3"),
         ValueError, "dataset must be one of"),
    Case("LM victim: target outside AG News's labels", lambda e: LMVictimConfig(
        task="classification", attack="badnets", data_dir="ag_news", dataset="ag_news",
        target=4), ValueError, "target must be a label id of ag_news"),
    Case("sliding_window 0", lambda e: ModelConfig.preset("tiny-llama", sliding_window=0),
         ValueError, "sliding_window"),
    Case("no heads", lambda e: ModelConfig.preset("tiny-bert", num_heads=0),
         ValueError, "num_heads"),
    Case("kv heads not dividing heads", lambda e: ModelConfig.preset(
        "tiny-llama", num_kv_heads=3), ValueError, "num_kv_heads"),
    Case("no layers", lambda e: ModelConfig.preset("tiny-bert", num_layers=0),
         ValueError, "num_layers"),
    Case("negative vocabulary", lambda e: ModelConfig.preset("tiny-bert", vocab_size=-1),
         ValueError, "vocab_size"),
    Case("dropout 1.5", lambda e: ModelConfig.preset("tiny-bert", hidden_dropout=1.5),
         ValueError, "hidden_dropout"),
    Case("norm_eps 0", lambda e: ModelConfig.preset("tiny-bert", norm_eps=0.0),
         ValueError, "norm_eps"),
    Case("negative head-wise rate", lambda e: HeadRates(safe=-2e-4),
         ValueError, "HeadRates.safe"),
    Case("NaN head-wise rate", lambda e: HeadRates(suspicious=float("nan")),
         ValueError, "HeadRates.suspicious"),
    Case("alpha 1.5", lambda e: HeadClassification(alpha=1.5), ValueError, "alpha"),
    Case("tau below 0", lambda e: HeadClassification(tau=-0.1), ValueError, "tau"),
    Case("alignment batch 0", lambda e: Alignment(batch_size=0), ValueError, "batch_size"),
    Case("fine-tuning batch 0", lambda e: FineTuning(batch_size=0), ValueError, "batch_size"),
    Case("score batch 0", lambda e: SanitizeConfig(score_batch_size=0), ValueError,
         "score_batch_size"),
    Case("detector fpr 1", lambda e: DetectorConfig(fpr=1.0), ValueError, "fpr"),
    Case("safety_scores: alpha 2", lambda e: safety_scores(np.zeros((2, 4)), np.zeros((2, 4)),
                                                           alpha=2.0), ValueError, "alpha"),
    Case("head classes outside HeadClass", lambda e: learning_rates(
        e.bert_params, np.full((2, 4), 5), e.bert.config, HeadRates()),
         InputError, "learning_rates: labels"),
    Case("head classes of another shape", lambda e: learning_rates(
        e.bert_params, np.zeros((4, 2), np.int32), e.bert.config, HeadRates()),
         ValueError, "labels must be [L, N]"),
    Case("classify_heads: tau 0.7", lambda e: classify_heads(np.zeros((2, 4)), tau=0.7),
         ValueError, "tau"),
    # Checkpoints.
    Case("config.json not JSON", lambda e: hf_io.load_pretrained(
        e.file("ckpt/config.json", "{") and e.tmp / "ckpt"),
         CheckpointError, "{tmp}/ckpt/config.json"),
    Case("config.json a list", lambda e: hf_io.load_pretrained(e.checkpoint(config=[1])),
         CheckpointError, "{tmp}/ckpt/config.json"),
    Case("config.json without hidden_size", lambda e: hf_io.load_pretrained(
        e.checkpoint(config=e.hf_config(hidden_size=_DROP))), CheckpointError, "hidden_size"),
    Case("config.json heads as a string", lambda e: hf_io.load_pretrained(
        e.checkpoint(config=e.hf_config(num_attention_heads="4"))),
         CheckpointError, "{tmp}/ckpt/config.json"),
    Case("config.json mistral window 0", lambda e: hf_io.read_architecture(
        {**e.hf_config(), "model_type": "mistral", "sliding_window": 0,
         "architectures": ["MistralForCausalLM"]}, "cfg.json"), CheckpointError, "cfg.json"),
    Case("safetensors shorter than 8 bytes", lambda e: safetensors_io.read_safetensors(
        e.file("w.safetensors", b"\1\2")), CheckpointError, "{tmp}/w.safetensors"),
    Case("safetensors header longer than the file", lambda e: safetensors_io.read_safetensors(
        e.file("w.safetensors", safetensors_bytes({}, length=10**6))),
         CheckpointError, "{tmp}/w.safetensors"),
    Case("safetensors header not JSON", lambda e: safetensors_io.read_safetensors(
        e.file("w.safetensors", safetensors_bytes(b"{oops"))),
         CheckpointError, "{tmp}/w.safetensors"),
    Case("safetensors header not an object", lambda e: safetensors_io.read_safetensors(
        e.file("w.safetensors", safetensors_bytes([1, 2]))),
         CheckpointError, "{tmp}/w.safetensors"),
    Case("safetensors entry without dtype", lambda e: safetensors_io.read_safetensors(
        e.file("w.safetensors", safetensors_bytes({"w": {"shape": [1]}}))),
         CheckpointError, "'w'"),
    Case("safetensors unknown dtype", lambda e: safetensors_io.read_safetensors(
        e.file("w.safetensors", safetensors_bytes(
            {"w": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, b"\0"))),
         CheckpointError, "{tmp}/w.safetensors"),
    Case("safetensors negative shape", lambda e: safetensors_io.read_safetensors(
        e.file("w.safetensors", safetensors_bytes(
            {"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, b"\0"))),
         CheckpointError, "{tmp}/w.safetensors"),
    Case("safetensors offsets past the data", lambda e: safetensors_io.read_safetensors(
        e.file("w.safetensors", safetensors_bytes(
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 4))),
         CheckpointError, "{tmp}/w.safetensors"),
    Case("integer tensor where floats belong", lambda e: hf_io.load_pretrained(e.checkpoint(
        tensors={"bert.pooler.dense.bias": np.zeros(16, np.int32)})),
         CheckpointError, "bert.pooler.dense.bias"),
    Case("boolean tensor where floats belong", lambda e: hf_io.load_pretrained(e.checkpoint(
        tensors={"bert.pooler.dense.bias": np.zeros(16, bool)})),
         CheckpointError, "{tmp}/ckpt"),
    Case("shard index not JSON", lambda e: safetensors_io.read_checkpoint_dir(
        e.file("idx/model.safetensors.index.json", "{") and e.tmp / "idx"),
         CheckpointError, "{tmp}/idx/model.safetensors.index.json"),
    Case("shard index without weight_map", lambda e: safetensors_io.read_checkpoint_dir(
        e.file("idx/model.safetensors.index.json", "{}") and e.tmp / "idx"),
         CheckpointError, "weight_map"),
    Case("shard outside the folder (..)", lambda e: safetensors_io.read_checkpoint_dir(
        e.sharded({"w": "../model-00001-of-00001.safetensors"})), CheckpointError, "outside"),
    Case("shard outside the folder (absolute)", lambda e: safetensors_io.read_checkpoint_dir(
        e.sharded({"w": "/etc/passwd"})), CheckpointError, "outside"),
    Case("shard missing", lambda e: safetensors_io.read_checkpoint_dir(
        e.sharded({"w": "model-00002-of-00002.safetensors"})),
         FileNotFoundError, "model-00002-of-00002.safetensors"),
    Case("tensor absent from its shard", lambda e: safetensors_io.read_checkpoint_dir(
        e.sharded({"nope": "model-00001-of-00001.safetensors"})), CheckpointError, "nope"),
    Case("GGUF without the magic", lambda e: gguf_io.read_gguf(
        e.file("m.gguf", b"GGML" + b"\0" * 60)), CheckpointError, "{tmp}/m.gguf"),
    Case("GGUF truncated", lambda e: gguf_io.read_gguf(
        e.file("m.gguf", b"GGUF\3\0\0\0" + b"\0" * 5)), CheckpointError, "{tmp}/m.gguf"),
    Case("GGUF a FIFO", lambda e: gguf_io.read_gguf(
        os.mkfifo(e.tmp / "f.gguf") or e.tmp / "f.gguf"), CheckpointError, "{tmp}/f.gguf"),
    Case("save: params of another model", lambda e: hf_io.save_pretrained(
        e.llama, e.bert_params, e.tmp / "out"), ValueError, "parameters"),
    Case("save: into a folder of other files", lambda e: hf_io.save_pretrained(
        e.bert, e.bert_params, e.file("notes/a.txt", "x").parent), FileExistsError,
         "{tmp}/notes"),
    Case("orbax: corrupt step", _corrupt_orbax_step, CheckpointError, "{tmp}/orbax/1"),
    # Data files.
    Case("empty tsv", lambda e: load_classification(e.file("d.tsv", "")),
         DataFileError, "{tmp}/d.tsv"),
    Case("a FIFO named .tsv", lambda e: load_classification(
        os.mkfifo(e.tmp / "f.tsv") or e.tmp / "f.tsv"), DataFileError, "{tmp}/f.tsv"),
    Case("undecodable bytes", lambda e: load_classification(
        e.file("d.tsv", b"sentence\tlabel\nok\t1\nbad \xff\t0\n")),
         DataFileError, "{tmp}/d.tsv:3"),
    Case("missing label column", lambda e: load_classification(
        e.file("d.tsv", "sentence\tscore\nok\t1\n")), ValueError, "'label'"),
    Case("missing text column", lambda e: load_classification(
        e.file("d.csv", "words,label\nok,1\n")), ValueError, "{tmp}/d.csv:2"),
    Case("header without rows", lambda e: load_classification(
        e.file("d.tsv", "sentence\tlabel\n")), DataFileError, "{tmp}/d.tsv"),
    Case("jsonl syntax error", lambda e: load_classification(
        e.file("d.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": \n')),
         DataFileError, "{tmp}/d.jsonl:2"),
    Case("instructions: not JSON", lambda e: load_instructions(e.file("i.json", "[{")),
         DataFileError, "{tmp}/i.json:1"),
]
