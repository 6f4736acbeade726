"""The real MiniLM weights on real SST-2 sentences against transformers."""

import numpy as np
import torch
import transformers

import jax_attnalign
from jax_attnalign import data
from jax_attnalign.models import PATTERNS, run_with_hooks

TOL = 1e-4


def test_minilm_hidden_states_and_attentions_match_transformers(minilm_path, shared_data):
  with open(shared_data / "sst2" / "clean" / "test.tsv", encoding="utf-8") as f:
    next(f)  # header: sentence<TAB>label
    sentences = [line.split("\t")[0] for line, _ in zip(f, range(16))]
  tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
  enc = tokenizer(sentences, padding=True, return_tensors="np")
  assert not enc["attention_mask"].all(), "want a padded batch"
  hf = transformers.AutoModel.from_pretrained(minilm_path, attn_implementation="eager").eval()
  with torch.no_grad():
    ref = hf(**{k: torch.tensor(v) for k, v in enc.items()},
             output_attentions=True, output_hidden_states=True)
  model, params = jax_attnalign.load_pretrained(minilm_path)
  assert (model.config.num_layers, model.config.num_heads) == (6, 12)
  out, captured = run_with_hooks(model, params, dict(enc), capture=PATTERNS,
                                 output_hidden_states=True)
  valid = enc["attention_mask"].astype(bool)
  for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
    np.testing.assert_allclose(np.asarray(ours)[valid], theirs.numpy()[valid], atol=TOL)
  maps = np.asarray(jax_attnalign.attention_maps(captured))  # [L, B, N, T, S]
  ref_maps = np.stack([a.numpy() for a in ref.attentions])
  diff = np.abs(maps - ref_maps).transpose(1, 3, 0, 2, 4)[valid]  # valid query rows
  assert diff.max() < TOL
  np.testing.assert_allclose(np.asarray(out.pooled), ref.pooler_output.numpy(), atol=TOL)


def test_minilm_classifier_export_reloads_in_transformers(minilm_path, shared_data, tmp_path):
  """The MiniLM classifier (fresh 2-label head) exported with its tokenizer: transformers'
  model and tokenizer load the folder, give our logits within 1e-5 and the same ids."""
  with open(shared_data / "sst2" / "clean" / "test.tsv", encoding="utf-8") as f:
    next(f)
    sentences = [line.split("\t")[0] for line, _ in zip(f, range(16))]
  model, params = jax_attnalign.load_pretrained(minilm_path, task="classification",
                                                num_labels=2)
  tokenizer = data.load_tokenizer(minilm_path)
  jax_attnalign.save_pretrained(model, params, tmp_path / "cls", tokenizer=tokenizer)
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path / "cls", attn_implementation="eager").eval()
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "cls")
  enc = hf_tokenizer(sentences, padding=True, return_tensors="np")
  ours_enc = tokenizer(sentences, padding=True, return_tensors="np")
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    np.testing.assert_array_equal(enc[key], ours_enc[key])
  assert hf_tokenizer.batch_decode(enc["input_ids"]) == tokenizer.batch_decode(enc["input_ids"])
  with torch.no_grad():
    ref = hf(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
  logits = model.apply({"params": params}, enc["input_ids"], enc["attention_mask"],
                       token_type_ids=enc["token_type_ids"]).logits
  assert np.abs(ref).max() > 1e-2  # a real head, not zeros
  np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-5)
