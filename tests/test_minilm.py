"""The real MiniLM weights on real SST-2 sentences against transformers."""

import numpy as np
import torch
import transformers

import jax_attnalign

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
  out, state = model.apply({"params": params}, enc["input_ids"], enc["attention_mask"],
                           token_type_ids=enc["token_type_ids"], capture_attention=True,
                           output_hidden_states=True, mutable=["intermediates"])
  valid = enc["attention_mask"].astype(bool)
  for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
    np.testing.assert_allclose(np.asarray(ours)[valid], theirs.numpy()[valid], atol=TOL)
  maps = np.asarray(jax_attnalign.attention_maps(state))  # [L, B, N, T, S]
  ref_maps = np.stack([a.numpy() for a in ref.attentions])
  diff = np.abs(maps - ref_maps).transpose(1, 3, 0, 2, 4)[valid]  # valid query rows
  assert diff.max() < TOL
  np.testing.assert_allclose(np.asarray(out.pooled), ref.pooler_output.numpy(), atol=TOL)
