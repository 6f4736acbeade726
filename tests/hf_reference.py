"""Reference numbers from transformers, independent of our model code: a saved
classifier's CA and ASR recomputed with `AutoModelForSequenceClassification`."""

import numpy as np
import torch
import transformers

from jax_attnalign import metrics


def hf_ca_asr(model_dir, clean: list, triggered: list, max_length: int,
              target: int) -> tuple[float, float]:
  """(CA on `clean`, ASR on `triggered`) of the transformers classifier in `model_dir`
  (with its tokenizer), inputs cut at `max_length` tokens; rows are TextExamples."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

  def predict(rows):
    enc = tokenizer([e.text for e in rows], padding=True, truncation=True,
                    max_length=max_length, return_tensors="pt")
    with torch.no_grad():
      return model(**enc).logits.argmax(-1).numpy()

  labels = lambda rows: np.array([e.label for e in rows])
  return (metrics.clean_accuracy(predict(clean), labels(clean)),
          metrics.attack_success_rate(predict(triggered), labels(triggered), target))
