"""Prompt templates: (prompt, answer) pairs, so training can mask the loss to the answer.

  - Encoders take the example's text as is (`encode_classification`); no template.
  - Decoder classification: the chat prompt of the paper's Listing 1 — a system
    message naming the label words, the text as the user message, the label word
    as the assistant's answer (`classification_chat`).
  - Instruction data: the Stanford Alpaca template (`alpaca_prompt`).
The answer never carries EOS; `encode_prompt_response` appends it.
"""

from __future__ import annotations

from typing import Any

from jax_attnalign.data.classification import ClassificationDataset, get_dataset
from jax_attnalign.data.types import InstructionExample, TextExample

# Used when the tokenizer has no chat template (or use_chat_template=False).
FALLBACK_CHAT_TEMPLATE = "### System:\n{system}\n\n### User:\n{user}\n\n### Assistant:\n"

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that "
    "provides further context. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
    "### Response:\n")
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that "
    "appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
    "### Response:\n")


def classification_messages(text: str,
                            dataset: str | ClassificationDataset) -> list[dict[str, str]]:
  """[system, user] chat messages for one text (paper, Listing 1)."""
  return [{"role": "system", "content": get_dataset(dataset).system_prompt},
          {"role": "user", "content": text}]


def classification_chat(example: TextExample, dataset: str | ClassificationDataset,
                        tokenizer: Any = None, *,
                        use_chat_template: bool = True) -> tuple[str, str]:
  """(prompt, answer) for decoder classification; answer = the label word.

  The prompt is the tokenizer's chat template applied to [system, user] with
  the generation prompt, when the tokenizer has one and use_chat_template;
  templates that reject a system role (Mistral v0.1) get the system text
  prepended to the user message instead. Otherwise FALLBACK_CHAT_TEMPLATE.

  >>> classification_chat(TextExample("great fun .", 1), "sst2")[1]
  'positive'
  """
  spec = get_dataset(dataset)
  answer = spec.label_names[example.label]
  system, user = classification_messages(example.text, spec)
  if tokenizer is None or not use_chat_template or not tokenizer.chat_template:
    return FALLBACK_CHAT_TEMPLATE.format(system=system["content"], user=example.text), answer
  # Only reached with a chat template, which transformers renders with jinja2.
  import jinja2  # pylint: disable=g-import-not-at-top  # not a transformers dependency

  try:
    prompt = _render(tokenizer, [system, user])
  except jinja2.TemplateError:
    merged = {"role": "user", "content": f"{system['content']}\n\n{example.text}"}
    prompt = _render(tokenizer, [merged])
  return prompt, answer


def alpaca_prompt(example: InstructionExample) -> tuple[str, str]:
  """(prompt, response) in the Stanford Alpaca template, with or without input."""
  if example.input.strip():
    prompt = ALPACA_PROMPT.format(instruction=example.instruction, input=example.input)
  else:
    prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=example.instruction)
  return prompt, example.output


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
  return tokenizer.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=True)
