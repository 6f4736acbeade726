"""The bundled SmolLM2-135M-Instruct (GGUF) against transformers loading the same file.

Real chat prompts (Alpaca instructions in the file's chat template), left-padded.
Tolerances, f32: attention probabilities 1e-4 absolute; logits and hidden states
1e-4 of each tensor's largest magnitude. The residual stream of this model holds
activations of about 25,000 (layers 12-28), where one f32 ulp is 0.002: both
implementations differ from a float64 forward by about 1e-2 there, so an
absolute 1e-4 is beyond either of them. The tests of this file share one
transformers model per process (--dist loadfile keeps them in one process).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import jax_attnalign
from jax_attnalign import assets, data
from jax_attnalign.analysis.similarity import head_similarity
from jax_attnalign.analysis.streaming import streaming_head_similarity
from jax_attnalign.models import PATTERNS, Hooks, run_with_hooks, scale_heads

NEW = 32


def assert_close_to_scale(ours, theirs, rel=1e-4):
  """|ours - theirs| <= rel * max(1, max|theirs|) elementwise."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape
  err, scale = np.abs(ours - theirs).max(), max(1.0, np.abs(theirs).max())
  assert err <= rel * scale, f"max error {err:.3g} > {rel} x {scale:.4g}"


@pytest.fixture(scope="module")
def smollm2():
  """{'path', 'model', 'params', 'tokenizer', 'hf'}: ours and transformers' from the GGUF file."""
  try:
    path = assets.bundled_smollm2_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  model, params = jax_attnalign.load_pretrained(path)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      path.parent, gguf_file=path.name, attn_implementation="eager",
      dtype=torch.float32).eval()
  return {"path": path, "model": model, "params": params, "hf": hf,
          "tokenizer": data.load_tokenizer(path)}


@pytest.fixture(scope="module")
def prompts(shared_data, smollm2):
  """Four Alpaca instructions (two with an input) as chat prompts, left-padded."""
  records = data.load_instructions(shared_data / "alpaca" / "alpaca_sample_200.json")
  chosen = [r for r in records if r.input][:2] + [r for r in records if not r.input][:2]
  texts = [data.instruction_chat(r, smollm2["tokenizer"])[0] for r in chosen]
  arrays = data.encode_prompts(texts, smollm2["tokenizer"], max_length=96)
  assert not arrays["attention_mask"].all(), "want a left-padded batch"
  assert arrays["attention_mask"][:, 0].sum() < 4 and arrays["attention_mask"][:, -1].all()
  return texts, arrays["input_ids"], arrays["attention_mask"]


def _hf_forward(hf, ids, mask):
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)  # as generate() gives left padding
  with torch.no_grad():
    return hf(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
              position_ids=torch.tensor(positions), output_attentions=True,
              output_hidden_states=True)


def test_config_and_tokenizer_from_the_file(smollm2):
  cfg, tok = smollm2["model"].config, smollm2["tokenizer"]
  assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size,
          cfg.intermediate_size, cfg.vocab_size) == (30, 9, 3, 64, 576, 1536, 49152)
  assert (cfg.rope_theta, cfg.tie_word_embeddings) == (100000.0, True)
  assert "lm_head" not in smollm2["params"]  # tied: the embedding is the output matrix
  assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                           "<|im_end|>")
  assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
      tok.bos_token_id, (tok.eos_token_id,), tok.pad_token_id)
  prompt = data.chat_prompt(tok, "Name a colour.")
  assert prompt.endswith("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")
  ids = tok(prompt, add_special_tokens=False)["input_ids"]
  assert ids[0] == tok.bos_token_id and ids.count(tok.eos_token_id) == 2
  assert tok.decode(ids) == prompt


def test_logits_hidden_states_and_attention_match_transformers(smollm2, prompts):
  _, ids, mask = prompts
  ref = _hf_forward(smollm2["hf"], ids, mask)
  out, captured = run_with_hooks(
      smollm2["model"], smollm2["params"], {"input_ids": ids, "attention_mask": mask},
      capture=PATTERNS, output_hidden_states=True)
  valid = mask.astype(bool)
  maps = np.asarray(jax_attnalign.attention_maps(captured))  # [L, B, N, T, S]
  ref_maps = np.stack([a.numpy() for a in ref.attentions])
  assert maps.shape == ref_maps.shape == (30, *ids.shape[:1], 9, *ids.shape[1:] * 2)
  assert np.abs(maps - ref_maps).transpose(1, 3, 0, 2, 4)[valid].max() < 1e-4
  assert len(out.hidden_states) == len(ref.hidden_states) == 31
  for ours, theirs in zip(out.hidden_states, ref.hidden_states):
    assert_close_to_scale(np.asarray(ours)[valid], theirs.numpy()[valid])
  assert_close_to_scale(np.asarray(out.logits)[valid], ref.logits.numpy()[valid])


def test_greedy_generation_equals_transformers(smollm2, prompts):
  _, ids, mask = prompts
  tok = smollm2["tokenizer"]
  with torch.no_grad():
    ref = smollm2["hf"].generate(torch.tensor(ids).long(),
                                 attention_mask=torch.tensor(mask).long(),
                                 max_new_tokens=NEW, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[:, ids.shape[1]:].numpy()
  out = jax_attnalign.generate(smollm2["model"], smollm2["params"], ids, mask,
                               max_new_tokens=NEW)
  tokens, token_mask = np.asarray(out.tokens), np.asarray(out.token_mask)
  ref_mask = np.cumsum(np.cumsum(ref == tok.eos_token_id, 1), 1) <= 1  # up to the first EOS
  np.testing.assert_array_equal(token_mask[:, :ref.shape[1]], ref_mask)
  np.testing.assert_array_equal(np.where(token_mask, tokens, -1)[:, :ref.shape[1]],
                                np.where(ref_mask, ref, -1))
  texts = tok.batch_decode(np.where(token_mask, tokens, tok.pad_token_id),
                           skip_special_tokens=True)
  assert all(len(t.split()) >= 5 for t in texts), texts


def test_sampled_generation_is_seeded_and_stops_at_im_end(smollm2, prompts):
  _, ids, mask = prompts
  run = lambda seed: jax_attnalign.generate(
      smollm2["model"], smollm2["params"], ids[:2], mask[:2], max_new_tokens=NEW,
      do_sample=True, rng=jax.random.key(seed), temperature=0.7, top_p=0.9)
  first, again, other = run(0), run(0), run(1)
  np.testing.assert_array_equal(np.asarray(first.tokens), np.asarray(again.tokens))
  assert not np.array_equal(np.asarray(first.tokens), np.asarray(other.tokens))
  eos = smollm2["tokenizer"].eos_token_id
  ended = 0
  for tokens, keep in zip(np.asarray(first.tokens), np.asarray(first.token_mask)):
    kept = tokens[keep > 0]
    assert eos not in kept[:-1]  # nothing is generated after <|im_end|>
    assert (tokens[keep == 0] == smollm2["tokenizer"].pad_token_id).all()
    ended += kept[-1] == eos
  assert ended >= 1  # the short answer (a corrected sentence) ends within NEW tokens


def test_export_then_transformers_reload(smollm2, prompts, tmp_path):
  """The exported folder: transformers' model and tokenizer load it; the weights
  come back exactly (transformers' logits on it equal its logits on the GGUF
  file) and give our logits within 1e-5 of their scale; the tokenizer encodes,
  decodes and renders chat prompts as the GGUF one does."""
  texts, ids, mask = prompts
  tok = smollm2["tokenizer"]
  jax_attnalign.save_pretrained(smollm2["model"], smollm2["params"], tmp_path, tokenizer=tok)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, attn_implementation="eager", dtype=torch.float32).eval()
  reloaded_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
  logits = _hf_forward(hf, ids, mask).logits.numpy()
  valid = mask.astype(bool)
  np.testing.assert_array_equal(logits[valid],
                                _hf_forward(smollm2["hf"], ids, mask).logits.numpy()[valid])
  ours = smollm2["model"].apply({"params": smollm2["params"]}, ids, mask).logits
  assert_close_to_scale(np.asarray(ours)[valid], logits[valid], rel=1e-5)
  samples = texts + ["Plain text, émigré naïveté, 12345 <|im_end|> tabs\tand\nnewlines"]
  for text in samples:
    assert reloaded_tok(text)["input_ids"] == tok(text)["input_ids"]
    assert reloaded_tok.decode(tok(text)["input_ids"]) == tok.decode(tok(text)["input_ids"])
  assert data.chat_prompt(reloaded_tok, "Hi", "Be brief.") == data.chat_prompt(tok, "Hi",
                                                                               "Be brief.")
  assert (len(reloaded_tok), reloaded_tok.all_special_tokens) == (len(tok),
                                                                  tok.all_special_tokens)
  assert [reloaded_tok.bos_token_id, reloaded_tok.eos_token_id, reloaded_tok.pad_token_id] \
      == [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]


def test_capture_gates_and_streaming_at_this_shape(smollm2, prompts):
  """270 heads, GQA 3:1: captured maps are distributions; a zero head gate equals
  zeroing that head's output rows; the streaming scan of the generation-to-prompt
  view equals the materialised one on a generated batch."""
  model, params = smollm2["model"], smollm2["params"]
  _, ids, mask = prompts
  gen = jax_attnalign.generate(model, params, ids, mask, max_new_tokens=4, eos_token_id=[],
                               return_attention=True)
  full_ids = np.concatenate([ids, np.asarray(gen.tokens)], 1)
  full_mask = np.concatenate([mask, np.asarray(gen.token_mask)], 1)
  prompt_lengths = np.full(len(ids), ids.shape[1])
  out, captured = jax.jit(lambda p: run_with_hooks(
      model, p, {"input_ids": full_ids, "attention_mask": full_mask}, capture=PATTERNS))(params)
  maps = jax_attnalign.attention_maps(captured)
  chex.assert_shape(maps, (30, len(ids), 9, full_ids.shape[1], full_ids.shape[1]))
  np.testing.assert_allclose(np.asarray(maps.sum(-1)), 1.0, atol=1e-5)
  # generate()'s own generation-to-prompt blocks are the captured ones.
  np.testing.assert_allclose(np.asarray(gen.attention),
                             np.asarray(maps)[:, :, :, ids.shape[1]:, :ids.shape[1]], atol=1e-5)
  streamed = jax.jit(streaming_head_similarity, static_argnums=(0, 4))(
      model, params, full_ids, full_mask, "gen_to_prompt", prompt_lengths=prompt_lengths)
  materialised = head_similarity(maps, "gen_to_prompt", attention_mask=full_mask,
                                 prompt_lengths=prompt_lengths, is_decoder=True)
  chex.assert_shape(streamed, (len(ids), 30, 9, 9))
  np.testing.assert_allclose(np.asarray(streamed), np.asarray(materialised), atol=1e-5)

  layer, head = 17, 4
  gates = jnp.ones((30, 9)).at[layer, head].set(0.0)
  pruned = jax.tree.map(lambda x: x, params)
  kernel = pruned[f"layers_{layer}"]["attention"]["out"]["kernel"]
  pruned[f"layers_{layer}"]["attention"]["out"]["kernel"] = kernel.at[head].set(0.0)
  logits = jax.jit(lambda p, g: model.apply({"params": p}, ids, mask,
                                            hooks=Hooks(edit=scale_heads(g))).logits)
  np.testing.assert_allclose(np.asarray(logits(params, gates)),
                             np.asarray(logits(pruned, jnp.ones((30, 9)))), atol=1e-4)
  assert not np.allclose(np.asarray(logits(params, gates)),
                         np.asarray(out.logits[:, :ids.shape[1]]), atol=1e-3)
