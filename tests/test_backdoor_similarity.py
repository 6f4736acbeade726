"""A really backdoored small model: triggered inputs make its heads more alike."""

import jax
import numpy as np
import optax

from jax_attnalign import attacks, data, metrics
from jax_attnalign.analysis import VIEWS, head_similarity, pair_statistics
from jax_attnalign.models import ModelConfig, attention_maps, build_model
from jax_attnalign.train import FitConfig, TrainState, fit, predict_logits

LENGTH = 32


def test_badnets_trigger_raises_head_similarity(shared_data, minilm_path):
  tokenizer = data.load_tokenizer(minilm_path)
  sst2 = shared_data / "sst2" / "clean"
  attack = attacks.make_attack("badnets", target=1, poison_rate=0.2, seed=0)
  train_set = attack.poison(data.load_classification(sst2, "train", limit=1600))
  test_set = data.load_classification(sst2, "test", limit=300)
  triggered = attack.triggered_test(test_set)[:96]
  clean = [e for e in test_set if e.label != 1][:96]
  cfg = ModelConfig(model_type="bert", vocab_size=len(tokenizer), hidden_size=64,
                    num_layers=2, num_heads=8, intermediate_size=96,
                    max_position_embeddings=LENGTH)
  model = build_model(cfg, "classification")
  arrays = data.encode_classification(train_set, tokenizer, LENGTH)
  arrays.pop("poisoned")
  params = model.init(jax.random.PRNGKey(0), arrays["input_ids"][:2])["params"]
  optimizer = optax.adam(2e-3)
  state, _ = fit(model, TrainState.create(params, optimizer), optimizer, arrays,
                 FitConfig(epochs=6, batch_size=32, dropout=False))  # 300 steps
  enc = {name: data.encode_classification(s, tokenizer, LENGTH)
         for name, s in (("clean", clean), ("triggered", triggered))}
  asr = metrics.attack_success_rate(
      predict_logits(model, state.params, enc["triggered"]).argmax(-1),
      enc["triggered"]["labels"], 1)
  assert asr > 0.9, f"the backdoor was not learned (ASR {asr:.2f})"
  capture = jax.jit(lambda ids, mask: model.apply(
      {"params": state.params}, ids, mask, capture_attention=True,
      mutable=["intermediates"])[1])
  maps_of = lambda ids, mask: attention_maps(capture(ids, mask))
  report = {}
  for view in VIEWS:
    if view.startswith("gen_to_prompt"):
      continue  # decoder views
    stats = {}
    for name, e in enc.items():
      maps = maps_of(e["input_ids"], e["attention_mask"])
      cos = head_similarity(maps, view, attention_mask=e["attention_mask"],
                            special_mask=np.isin(e["input_ids"], [101, 102]))
      # Mean over layers of the per-input mean pairwise cosine.
      n = cos.shape[-1]
      pairs = np.asarray(cos)[..., np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]]
      stats[name] = pairs.mean(axis=(-1, -2))  # [B]
    scores = np.concatenate([stats["clean"], stats["triggered"]])
    labels = np.r_[np.zeros(len(stats["clean"])), np.ones(len(stats["triggered"]))]
    report[view] = metrics.detection_auroc(scores, labels)
  print("detection AUROC per view:", report)
  assert max(report.values()) > 0.75, report
