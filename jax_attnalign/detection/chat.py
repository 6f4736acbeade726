"""A chat decoder as the input detectors see it, under the `Victim` interface of
the encoders: a causal LM fine-tuned on the paper's Listing-1 prompt
(`harness.victims_lm`: a system prompt naming the label words, the text as the
user turn, the label word as the answer), or, with dataset None, on
instructions (a generation victim: refusal, sentiment steering).

  model, params = load_pretrained(victim_dir / "model", task="causal_lm")
  victim = ChatVictim(model, params, load_tokenizer(victim_dir / "model"), dataset="sst2")
  detector = make_detector("dan").fit(victim, clean)  # every detector of DETECTORS

A generation victim has no classes (`num_classes` 0): the detectors that read
class probabilities (STRIP, RAP: `needs_classes`) do not apply, DAN fits one
class, and its answers are `answer_tokens` long (the victims' 48).

It reads two encodings of each example:
  * `class_inputs`: the chat prompt alone, left-padded; the class logits are the
    next-token logits at the last prompt token restricted to each label word's
    first token (the answer a victim gives begins with it). STRIP, RAP and
    `probabilities` read these: no decoding.
  * `encode`: the prompt followed by the model's own greedy answer (a
    classifier's 4 tokens, as `experiments.analyze_lm` and `defend_lm` read it), with its
    loss_mask, special_mask and prompt_lengths. The head signals read its
    generation-to-prompt block (the views' output rows), DAN and output_profile
    the last prompt token (`_profile.readout`), importance_profile the loss of
    the model's own answer. A list's answers are decoded once and kept, since
    the benchmark scores the same sets with every detector.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import numpy as np

from jax_attnalign import data, parallel
from jax_attnalign.answers import bucketed_prompts, greedy_answers
from jax_attnalign.data.types import InstructionExample, TextExample
from jax_attnalign.defense.scoring import per_input
from jax_attnalign.detection.base import Victim, require_classes
from jax_attnalign.errors import InputError
from jax_attnalign.models import apply_batch

ANSWER_TOKENS = 4  # a classifier's answer, as analyze_lm and defend_lm decode it
# RAP's rare word for SmolLM2's tokenizer, where RAP's default "tq" is two tokens:
# by a rule fixed before any detection ran, the two-letter lowercase word that is
# one token alone and inside the chat prompt with the largest id (BPE's last
# merge of those, the rarest), not one of the BadNets triggers.
RAP_WORD = "cx"


@functools.partial(jax.jit, static_argnames=("model", "label_ids"))
def label_logits(model, params, batch: dict, label_ids: tuple[int, ...]) -> jax.Array:
  """The next-token logits after each prompt at the label words' first tokens: [B, C]."""
  return apply_batch(label_word_classifier(model, label_ids), params, batch).logits[:, :-1]


def label_word_classifier(model, label_ids: Sequence[int]):
  """The chat LM `model` as a classifier over its label words and "any other
  answer" (`Llama.label_ids`): same parameters, class logits [B, C + 1] the LM's
  logits of `label_ids` after the prompt, then the other tokens' log-sum-exp."""
  return model.clone(task="classification", label_ids=tuple(int(i) for i in label_ids))


def label_token_ids(tokenizer, label_names: Sequence[str]) -> tuple[int, ...]:
  """Each label word's first token as an answer (tokenised alone, as the victims'
  responses are); the words must begin with distinct tokens."""
  ids = tuple(tokenizer(name, add_special_tokens=False)["input_ids"][0] for name in label_names)
  if len(set(ids)) != len(ids):
    raise InputError(f"The label words {list(label_names)} do not begin with distinct tokens "
                     f"({list(ids)}), so one next-token logit cannot tell them apart.")
  return ids


@dataclasses.dataclass
class ChatVictim(Victim):
  """A Listing-1 chat classifier of `dataset`, or with dataset None an
  instruction-following victim (module docstring); max_length is unused (prompts
  are kept whole, as the victims' evaluation keeps them)."""
  dataset: str | None = "sst2"
  answer_tokens: int = ANSWER_TOKENS
  _answers: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                     compare=False)

  def __post_init__(self):
    if not self.model.config.is_decoder:
      raise InputError("ChatVictim needs a causal LM (load it with task='causal_lm'); "
                       "an encoder classifier is a plain Victim.")
    self.label_ids = () if self.dataset is None else label_token_ids(
        self.tokenizer, data.get_dataset(self.dataset).label_names)

  @property
  def num_classes(self) -> int:
    return len(self.label_ids)

  def prompts(self, examples: Sequence[TextExample | InstructionExample]) -> list[str]:
    if self.dataset is None:
      return [data.instruction_chat(e, self.tokenizer)[0] for e in examples]
    return [data.classification_chat(e, self.dataset, self.tokenizer)[0] for e in examples]

  def encode(self, examples: Sequence[TextExample]) -> dict[str, np.ndarray]:
    """Each prompt followed by the model's own greedy answer (`greedy_answers`)."""
    prompts = tuple(self.prompts(examples))
    if prompts not in self._answers:
      self._answers[prompts] = greedy_answers(self.model, self.params, self.tokenizer,
                                              list(prompts), max_new_tokens=self.answer_tokens,
                                              batch_size=self.batch_size)
    return self._answers[prompts]

  def keep_answers(self, examples: Sequence[TextExample | InstructionExample],
                   arrays: dict[str, np.ndarray]) -> None:
    """Makes `encode(examples)` return `arrays`, these examples' answer inputs
    already decoded by `greedy_answers` (e.g. the defense's stream)."""
    self._answers[tuple(self.prompts(examples))] = arrays

  def class_inputs(self, examples: Sequence[TextExample]) -> dict[str, np.ndarray]:
    """The prompts left-padded to their longest, rounded up to 16 slots (`bucketed_prompts`)."""
    require_classes("ChatVictim.class_inputs", self)
    return bucketed_prompts(self.model, self.tokenizer, self.prompts(examples))

  def class_logits(self, params, batch: dict) -> jax.Array:
    return label_logits(self.model, params, batch, self.label_ids)

  def probabilities(self, examples: Sequence[TextExample]) -> np.ndarray:
    logits = per_input(lambda batch: self.class_logits(self.params, batch),
                       self.class_inputs(examples), self.batch_size, parallel.data_mesh())
    return np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), axis=-1))
