"""A really backdoored small model: triggered inputs make its heads more alike."""

import jax
import numpy as np

from conftest import SMALL_LENGTH as LENGTH
from jax_attnalign import data, metrics
from jax_attnalign.analysis import VIEWS, head_similarity
from jax_attnalign.models import PATTERNS, attention_maps, run_with_hooks
from jax_attnalign.train import predict_logits


def test_badnets_trigger_raises_head_similarity(small_badnets):
  model, params = small_badnets["model"], small_badnets["params"]
  tokenizer, attack = small_badnets["tokenizer"], small_badnets["attack"]
  test_set = data.load_classification(small_badnets["sst2"], "test", limit=300)
  triggered = attack.triggered_test(test_set)[:96]
  clean = [e for e in test_set if e.label != 1][:96]
  enc = {name: data.encode_classification(s, tokenizer, LENGTH)
         for name, s in (("clean", clean), ("triggered", triggered))}
  asr = metrics.attack_success_rate(
      predict_logits(model, params, enc["triggered"]).argmax(-1),
      enc["triggered"]["labels"], 1)
  assert asr > 0.9, f"the backdoor was not learned (ASR {asr:.2f})"
  capture = jax.jit(lambda ids, mask: run_with_hooks(
      model, params, {"input_ids": ids, "attention_mask": mask}, capture=PATTERNS)[1])
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
