"""Head importance (eq. 4) against HF torch with hooks on every head's output."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tiny_hf
from jax_attnalign.analysis import importance as imp


def _torch_reference(hf, ids, mask, *, labels=None, loss_mask=None, positions=None):
  """Per-example H^T dL/dH per head [B, L, N], with H captured at each output
  projection's input (the concatenated heads) by forward pre-hooks."""
  cfg = hf.config
  heads_in = []

  def keep(_, args):
    args[0].retain_grad()
    heads_in.append(args[0])

  is_bert = cfg.model_type == "bert"
  layers = hf.bert.encoder.layer if is_bert else hf.model.layers
  hooks = [(l.attention.output.dense if is_bert else l.self_attn.o_proj)
           .register_forward_pre_hook(keep) for l in layers]
  kwargs = {} if positions is None else {"position_ids": torch.tensor(positions)}
  logits = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
              **kwargs).logits.float()
  for h in hooks:
    h.remove()
  if labels is not None:  # a sum of per-example losses keeps examples apart
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels), reduction="sum")
  else:
    lm = torch.tensor(loss_mask[:, 1:], dtype=torch.float32)
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), torch.tensor(ids[:, 1:]), reduction="none")
    loss = ((ce * lm).sum(1) / lm.sum(1).clamp(min=1)).sum()
  loss.backward()
  n = cfg.num_attention_heads
  hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // n
  terms = [(h * h.grad).reshape(*h.shape[:2], n, hd).sum((1, 3)) for h in heads_in]
  return torch.stack(terms, 1).detach().numpy()  # [B, L, N]


@pytest.fixture(scope="module", params=["bert_cls", "llama"])
def case(request, tmp_path_factory):
  hf, model, params = tiny_hf.make_and_load(request.param,
                                           tmp_path_factory.mktemp(request.param))
  ids, mask = tiny_hf.batch(request.param)
  batch = {"input_ids": ids, "attention_mask": mask}
  if model.config.is_decoder:
    batch["loss_mask"] = (np.arange(ids.shape[1]) >= 9).astype(np.int32)[None].repeat(3, 0)
  else:
    batch["labels"] = np.array([0, 2, 1])
  return hf, model, params, batch


def test_gate_gradients_equal_torch_hooks(case):
  hf, model, params, batch = case
  ids, mask = batch["input_ids"], batch["attention_mask"]
  positions = tiny_hf.left_padded_positions(mask) if model.config.is_decoder else None
  ref = _torch_reference(hf, ids, mask, labels=batch.get("labels"),
                         loss_mask=batch.get("loss_mask"), positions=positions)
  ours = np.asarray(imp.head_gate_gradients(model, params, batch))
  assert ours.shape == ref.shape == (3, model.config.num_layers, model.config.num_heads)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  # eq. 4: the expectation of the absolute value, then normalised by the global max.
  G = np.abs(ref).mean(0)
  np.testing.assert_allclose(imp.head_importance(model, params, batch), G / G.max(),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      imp.head_importance(model, params, batch, normalization="layer_l2"),
      G / np.linalg.norm(G, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_predictions_as_labels(case):
  """Label-free importance equals importance with the model's predictions given."""
  _, model, params, batch = case
  out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"])
  own = dict(batch)
  if model.config.is_decoder:
    # One answer token at position 9, set to the prediction made at position 8
    # (causal: that prediction does not depend on token 9).
    own["input_ids"] = batch["input_ids"].copy()
    own["input_ids"][:, 9] = np.asarray(jnp.argmax(out.logits[:, 8], -1))
    own["loss_mask"] = (np.arange(own["input_ids"].shape[1]) == 9)[None].repeat(3, 0)
  else:
    own["labels"] = np.asarray(jnp.argmax(out.logits, -1))
  label_free = {k: v for k, v in own.items() if k != "labels"}
  if not model.config.is_decoder:
    label_free["labels"] = np.full_like(own["labels"], -1)  # never read
  np.testing.assert_allclose(
      imp.head_gate_gradients(model, params, label_free, use_predictions=True),
      imp.head_gate_gradients(model, params, own), rtol=1e-5, atol=1e-7)


def test_batch_padding_rows_are_ignored_and_no_retrace(case):
  _, model, params, batch = case
  base = imp.head_importance(model, params, batch, normalization="none")
  padded = {k: np.concatenate([v, np.zeros_like(v[:1])]) for k, v in batch.items()}
  np.testing.assert_allclose(
      imp.head_importance(model, params, padded, normalization="none"), base, rtol=1e-6)
  chex.clear_trace_counter()  # the counter is per code location, across parameters
  fn = chex.assert_max_traces(n=1)(
      lambda b: imp.head_gate_gradients.__wrapped__(model, params, b))
  jitted = jax.jit(fn)
  for seed in range(3):  # new data, same shapes: traced once
    rng = np.random.RandomState(seed)
    jitted({**batch, "input_ids": rng.randint(3, tiny_hf.VOCAB, batch["input_ids"].shape)})
