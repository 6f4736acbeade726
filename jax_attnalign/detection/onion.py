"""ONION (Qi et al. 2021, "ONION: A Simple and Effective Defense Against Textual
Backdoor Attacks"): outlier words found by a language model's perplexity.

  detector = make_detector("onion")  # the bundled SmolLM2 as the language model
  scores = detector.score(victim, incoming)  # higher = more likely triggered

The rule: for an input of words w_1..w_n (split on whitespace), word i's
suspicion is f_i = p_0 - p_i, p_0 the perplexity of the sentence and p_i that
of the sentence without w_i; the input's score is max_i f_i (an outlier word,
such as an inserted rare-word trigger, makes the sentence much less likely, and
removing it drops the perplexity). A text of fewer than two words has nothing
to remove and scores 0.

Perplexity is exp of the mean next-token negative log-likelihood of the
sentence's tokens, each word read with a leading space after `start_token`
(which is not itself scored), as `attacks.lm_substitutes` reads sentences. All
the leave-one-out variants of all inputs go through one jitted batched pass
(`lm_substitutes.sentence_log_likelihoods`).

What the defender needs: an extra language model (`language_model`, a
checkpoint path; "" = the bundled SmolLM2-135M-Instruct). No clean data, no
labels, nothing from the victim: `fit` learns nothing.

What differs from the paper: ONION uses GPT-2 (small) as the language model;
ours is SmolLM2. ONION removes the words whose suspicion exceeds a threshold
(a correction defense; OpenBackdoor's ONIONDefender likewise); as a detector
we score an input by its largest suspicion and threshold that with
`calibrate` on clean inputs.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from jax_attnalign import validation
from jax_attnalign.attacks.lm_substitutes import sentence_log_likelihoods, word_ids
from jax_attnalign.assets import bundled_smollm2_path
from jax_attnalign.data import load_tokenizer
from jax_attnalign.data.types import InstructionExample, TextExample
from jax_attnalign.detection.base import Victim, register
from jax_attnalign.models.hf_io import load_pretrained


@register
class ONION:
  """Largest perplexity drop from removing one word (module docstring)."""
  name = "onion"

  def __init__(self, language_model: str = "", start_token: str = "<|endoftext|>",
               batch_size: int = 32):
    if not isinstance(language_model, str):
      raise ValueError(f"ONION.language_model must be a path string ('' = the bundled "
                       f"SmolLM2), got {language_model!r}.")
    validation.at_least("ONION.batch_size", batch_size, 1)
    self.language_model, self.start_token, self.batch_size = (language_model, start_token,
                                                              batch_size)

  def settings(self) -> dict:
    return {"language_model": self.language_model, "start_token": self.start_token,
            "batch_size": self.batch_size}

  def state(self) -> dict[str, np.ndarray]:
    return {}

  def load_state(self, state: dict[str, np.ndarray]) -> None:
    del state  # nothing is fitted

  def fit(self, victim: Victim, clean: Sequence[TextExample]) -> "ONION":
    del victim, clean  # ONION needs no clean data
    return self

  @functools.cached_property
  def lm(self):
    """(model, params, tokenizer, start id) of the language model, loaded once."""
    path = self.language_model or bundled_smollm2_path()
    model, params = load_pretrained(path, task="causal_lm")
    tokenizer = load_tokenizer(path)
    if self.start_token not in tokenizer.get_vocab():
      raise ValueError(f"ONION.start_token {self.start_token!r} is not a token of {path}.")
    return model, params, tokenizer, tokenizer.convert_tokens_to_ids(self.start_token)

  def suspicions(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Per text, each word's suspicion p_0 - p_i ([words]; empty under two words)."""
    model, params, tokenizer, start = self.lm
    rows, sizes = [], []  # per text of >= 2 words: the sentence, then each variant
    for words in (text.split() for text in texts):
      sizes.append(len(words) + 1 if len(words) >= 2 else 0)
      if sizes[-1]:
        ids = word_ids(tokenizer, words)
        rows += [sum(ids, [])] + [sum(ids[:i] + ids[i + 1:], []) for i in range(len(ids))]
    log_likelihoods = sentence_log_likelihoods(model, params, rows, start_id=start,
                                               batch_size=self.batch_size)
    perplexities = np.exp(-log_likelihoods / np.array([max(len(r), 1) for r in rows]))
    groups = np.split(perplexities, np.cumsum(sizes))[:-1]  # the last is always empty
    return [g[0] - g[1:] if g.size else g for g in groups]

  def score(self, victim: Victim, examples: Sequence[TextExample | InstructionExample]
            ) -> np.ndarray:
    del victim  # ONION reads the texts alone (an instruction record's: instruction, input)
    texts = [f"{e.instruction} {e.input}".strip() if isinstance(e, InstructionExample)
             else e.text for e in examples]
    return np.array([s.max() if s.size else 0.0 for s in self.suspicions(texts)], np.float64)
