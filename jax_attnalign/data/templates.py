"""Prompt templates: (prompt, answer) pairs, so training can mask the loss to the answer.

  - Encoders take the example's text as is (`encode_classification`); no template.
  - Decoder classification: the chat prompt of the paper's Listing 1 — a system
    message naming the label words, the text as the user message, the label word
    as the assistant's answer (`classification_chat`).
  - Instruction data: the tokenizer's chat template (`instruction_chat`), or the
    Stanford Alpaca template (`alpaca_prompt`) for models without one.
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


def chat_prompt(tokenizer: Any, user: str, system: str | None = None, *,
                use_chat_template: bool = True) -> str:
  """One user turn (after an optional system turn) in the tokenizer's chat
  template, ending with the generation prompt (the assistant's turn opened).

  Templates that reject a system role (Mistral v0.1) get the system text
  prepended to the user message instead. Without a chat template (or with
  use_chat_template=False): FALLBACK_CHAT_TEMPLATE.
  """
  if tokenizer is None or not use_chat_template or not tokenizer.chat_template:
    return FALLBACK_CHAT_TEMPLATE.format(system=system or "", user=user)
  # Only reached with a chat template, which transformers renders with jinja2.
  import jinja2  # pylint: disable=g-import-not-at-top  # not a transformers dependency

  turns = [{"role": "system", "content": system}] if system else []
  try:
    return _render(tokenizer, turns + [{"role": "user", "content": user}])
  except jinja2.TemplateError:
    if not system:
      raise
    return _render(tokenizer, [{"role": "user", "content": f"{system}\n\n{user}"}])


def classification_chat(example: TextExample, dataset: str | ClassificationDataset,
                        tokenizer: Any = None, *,
                        use_chat_template: bool = True) -> tuple[str, str]:
  """(prompt, answer) for decoder classification; answer = the label word.

  The prompt is `chat_prompt` of [system, user] (paper, Listing 1).

  >>> classification_chat(TextExample("great fun .", 1), "sst2")[1]
  'positive'
  """
  spec = get_dataset(dataset)
  system, user = classification_messages(example.text, spec)
  prompt = chat_prompt(tokenizer, user["content"], system["content"],
                       use_chat_template=use_chat_template)
  return prompt, spec.label_names[example.label]


def prompt_text(row: TextExample | InstructionExample) -> str:
  """The text a model reads of a row: a classifier's text, or an Alpaca
  record's instruction with its input below it after a blank line."""
  if isinstance(row, InstructionExample):
    return f"{row.instruction}\n\n{row.input}" if row.input.strip() else row.instruction
  return row.text


def instruction_chat(example: InstructionExample, tokenizer: Any) -> tuple[str, str]:
  """(prompt, response) of an Alpaca record for a chat model: the instruction
  (and its input after a blank line) as the user turn of the tokenizer's chat
  template. A tokenizer without a chat template gets `alpaca_prompt`."""
  if tokenizer is None or not tokenizer.chat_template:
    return alpaca_prompt(example)
  return chat_prompt(tokenizer, prompt_text(example)), example.output


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
