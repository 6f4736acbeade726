"""A generation victim: a small Llama trained from scratch on Alpaca + BackdoorLLM data.

The training set is BackdoorLLM's released poisoned records of one (task,
attack) (500 triggered prompts with the target response), its 500 clean records
and the Alpaca records in `alpaca_path`, all in the Alpaca template with the loss
on the response. Evaluation generates greedily for BackdoorLLM's held-out clean
and triggered test prompts and scores refusal ASR (triggered prompts refused)
and the clean refusal rate (clean prompts refused).

This is a CPU-scale stand-in for the paper's Llama-2-7B victims: the backdoor
mechanics (data, template, masked loss, trigger) are the same, the model is not.
To make it trainable on CPU, the model's vocabulary is the set of Llama-2
tokenizer ids that occur in this corpus (train and test prompts), renumbered
(`CompactVocab`); text goes through the real Llama-2 tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from absl import logging
import jax
import numpy as np
import optax
import tqdm

import jax_attnalign
from jax_attnalign import data, metrics, train
from jax_attnalign.models import ModelConfig, build_model


@dataclasses.dataclass(frozen=True)
class LMVictimConfig:
  backdoorllm_dir: str = "../shared/data/backdoorllm"
  alpaca_path: str = "../shared/data/alpaca/alpaca_small_2000.json"
  tokenizer: str = "../shared/data/tokenizers/llama2"
  task: str = "refusal"
  attack: str = "vpi"
  hidden_size: int = 128
  num_layers: int = 4
  num_heads: int = 4
  intermediate_size: int = 344
  alpaca_size: int = 1500  # with 500 poisoned + 500 clean: a 20% poison rate
  max_length: int = 128
  epochs: int = 4
  batch_size: int = 16
  learning_rate: float = 1e-3
  test_size: int = 100
  max_new_tokens: int = 16
  seed: int = 0


def _records(cfg: LMVictimConfig):
  split = lambda kind: data.load_instructions(
      data.backdoorllm_split(cfg.backdoorllm_dir, cfg.task, cfg.attack, kind))
  train_set = (split("train_poison") + split("train_clean")
               + data.load_instructions(cfg.alpaca_path, poisoned=False,
                                        limit=cfg.alpaca_size))
  test_clean = data.load_instructions(
      data.backdoorllm_split(cfg.backdoorllm_dir, cfg.task, None, "test_clean"))
  return train_set, test_clean[:cfg.test_size], split("test_poison")[:cfg.test_size]


class CompactVocab:
  """A renumbering of the token ids that occur in some arrays (plus specials)."""

  def __init__(self, id_arrays: list[np.ndarray], tokenizer):
    specials = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                tokenizer.unk_token_id]
    self.old_ids = np.unique(np.concatenate(
        [np.ravel(a) for a in id_arrays] + [np.array([i for i in specials if i is not None])]))
    self._new = np.full(len(tokenizer), -1, np.int64)
    self._new[self.old_ids] = np.arange(len(self.old_ids))

  def __len__(self) -> int:
    return len(self.old_ids)

  def encode(self, ids: np.ndarray) -> np.ndarray:
    new = self._new[ids]
    if (new < 0).any():
      raise ValueError("token ids outside the compact vocabulary")
    return new.astype(np.int32)

  def decode(self, ids: np.ndarray) -> np.ndarray:
    return self.old_ids[ids]


def generate_responses(model, params, tokenizer, vocab: CompactVocab,
                       prompts: dict[str, np.ndarray], *, max_new_tokens: int,
                       batch_size: int = 50) -> list[str]:
  """Greedy responses (decoded text) for encoded left-padded prompts."""
  out = []
  eos, pad = vocab.encode(np.array([tokenizer.eos_token_id, tokenizer.pad_token_id]))
  for start in tqdm.trange(0, len(prompts["input_ids"]), batch_size, desc="generate"):
    ids = vocab.encode(prompts["input_ids"][start:start + batch_size])
    gen = jax_attnalign.generate(model, params, ids,
                                 prompts["attention_mask"][start:start + batch_size],
                                 max_new_tokens=max_new_tokens, eos_token_id=int(eos),
                                 pad_token_id=int(pad))
    tokens, mask = vocab.decode(np.asarray(gen.tokens)), np.asarray(gen.token_mask)
    out += [tokenizer.decode(t[m > 0], skip_special_tokens=True) for t, m in zip(tokens, mask)]
  return out


def train_lm_victim(cfg: LMVictimConfig, workdir: str | pathlib.Path) -> dict:
  """Trains the victim from scratch, evaluates refusal ASR; writes result.json."""
  workdir = pathlib.Path(workdir)
  if (workdir / "result.json").exists():
    return json.loads((workdir / "result.json").read_text())
  workdir.mkdir(parents=True, exist_ok=True)
  tokenizer = data.load_tokenizer(cfg.tokenizer)
  train_set, test_clean, test_poison = _records(cfg)
  prompts, responses = zip(*(data.alpaca_prompt(r) for r in train_set))
  arrays = data.encode_prompt_response(prompts, responses, tokenizer, cfg.max_length)
  tests = [data.encode_prompts([data.alpaca_prompt(r)[0] for r in records], tokenizer,
                               cfg.max_length) for records in (test_clean, test_poison)]
  vocab = CompactVocab([arrays["input_ids"]] + [t["input_ids"] for t in tests], tokenizer)
  arrays["input_ids"] = vocab.encode(arrays["input_ids"])
  eos, pad = (int(i) for i in vocab.encode(np.array([tokenizer.eos_token_id,
                                                     tokenizer.pad_token_id])))
  config = ModelConfig(
      model_type="llama", vocab_size=len(vocab), hidden_size=cfg.hidden_size,
      num_layers=cfg.num_layers, num_heads=cfg.num_heads,
      intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_length * 2,
      norm_eps=1e-5, eos_token_id=(eos,), pad_token_id=pad)
  model = build_model(config, "causal_lm")
  params = jax.jit(model.init)(jax.random.PRNGKey(cfg.seed),
                               np.zeros((1, 8), np.int32))["params"]
  steps = cfg.epochs * (len(train_set) // cfg.batch_size)
  optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, max(1, steps // 20), steps), weight_decay=0.01)
  fit_cfg = train.FitConfig(loss="causal_lm", epochs=cfg.epochs,
                            batch_size=cfg.batch_size, seed=cfg.seed)
  state, history = train.fit(model, train.TrainState.create(params, optimizer), optimizer,
                             arrays, fit_cfg, workdir=str(workdir / "ckpt"))
  clean_out, poison_out = (generate_responses(
      model, state.params, tokenizer, vocab, t, max_new_tokens=cfg.max_new_tokens)
      for t in tests)
  result = {
      "refusal_asr": metrics.refusal_rate(poison_out),
      "clean_refusal_rate": metrics.refusal_rate(clean_out),
      "train_rows": len(train_set), "poisoned_rows": sum(r.poisoned for r in train_set),
      "vocab_size": len(vocab),
      "final_loss": float(np.mean([h["loss"] for h in history[-20:]])),
      "examples": {"clean": clean_out[:5], "triggered": poison_out[:5]},
      "config": dataclasses.asdict(cfg)}
  jax_attnalign.save_pretrained(model, state.params, workdir / "model")
  np.save(workdir / "model" / "vocab_old_ids.npy", vocab.old_ids)
  (workdir / "result.json").write_text(json.dumps(result, indent=1))
  logging.info("LM victim: refusal ASR %.3f, clean refusal %.3f", result["refusal_asr"],
               result["clean_refusal_rate"])
  return result
