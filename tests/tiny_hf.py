"""Tiny random transformers models with prime-sized dimensions, for parity tests."""

from __future__ import annotations

import numpy as np
import torch
import transformers

VOCAB = 97
# BERT: 5 heads of 7 dims. Decoders: 3 query heads, 1 key/value head (GQA) of
# 10 dims (rotary embeddings need an even head dim) over a model dim of 33.
_BERT = dict(vocab_size=VOCAB, hidden_size=35, num_attention_heads=5,
             intermediate_size=37, num_hidden_layers=2, max_position_embeddings=41,
             type_vocab_size=3, pad_token_id=0)
_DECODER = dict(vocab_size=VOCAB, hidden_size=33, num_attention_heads=3,
                num_key_value_heads=1, head_dim=10, intermediate_size=37,
                num_hidden_layers=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                rope_theta=313.0)

CASES = {
    # name: (transformers class, config class, config overrides)
    "bert": ("BertModel", "BertConfig", {}),
    "bert_cls": ("BertForSequenceClassification", "BertConfig", dict(num_labels=3)),
    "bert_mlm": ("BertForMaskedLM", "BertConfig", {}),
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(attention_bias=True, mlp_bias=True)),
    "llama_tied": ("LlamaForCausalLM", "LlamaConfig", dict(tie_word_embeddings=True)),
    "llama_cls": ("LlamaForSequenceClassification", "LlamaConfig", dict(num_labels=3)),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(sliding_window=5)),
}
DECODER_CASES = ("llama", "llama_tied", "mistral")


def make(name: str, seed: int = 0) -> transformers.PreTrainedModel:
  """A tiny random HF model in eager attention mode (so it returns attentions)."""
  model_cls, config_cls, overrides = CASES[name]
  base = _BERT if config_cls == "BertConfig" else _DECODER
  config = getattr(transformers, config_cls)(
      **{**base, **overrides}, attn_implementation="eager")
  torch.manual_seed(seed)
  model = getattr(transformers, model_cls)(config).eval()
  with torch.no_grad():  # random, not zero, norms and biases so no term hides
    for pname, p in model.named_parameters():
      if pname.endswith("bias") or "norm" in pname.lower():
        p.add_(0.1 * torch.randn_like(p))
  return model


def batch(name: str, batch_size: int = 3, length: int = 13, seed: int = 0):
  """(input_ids, attention_mask) as int64 numpy: right padding for BERT, left for decoders."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, VOCAB, (batch_size, length))
  mask = np.ones((batch_size, length), np.int64)
  if CASES[name][1] == "BertConfig":
    mask[1, 8:] = 0
    mask[2, 11:] = 0
  else:
    mask[1, :5] = 0
    mask[2, :2] = 0
  ids[mask == 0] = 0
  return ids, mask


def left_padded_positions(mask: np.ndarray) -> np.ndarray:
  """The position ids transformers' generate() gives left-padded rows."""
  return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)


def make_and_load(name: str, directory):
  """(HF model, our model, our params): the HF model saved by transformers into
  `directory` and loaded back with jax_attnalign.load_pretrained."""
  import jax_attnalign  # pylint: disable=g-import-not-at-top
  hf = make(name)
  hf.save_pretrained(directory)
  model, params = jax_attnalign.load_pretrained(directory)
  return hf, model, params
