"""Datasets, prompt templates, tokenisation and batching.

  examples = load_classification(resolve_data_path("sst2/clean"), "train")
  records = load_instructions(backdoorllm_split(root, "refusal", "badnet", "train_poison"))
  prompt, answer = classification_chat(examples[0], "sst2", tokenizer)
  arrays = encode_prompt_response([prompt], [answer], tokenizer, max_length=128)
"""

from jax_attnalign.data._hub import HubUnreachableError
from jax_attnalign.data.batching import (encode_classification, encode_prompt_response,
                                         encode_prompts, iterate_batches, load_tokenizer,
                                         unknown_words)
from jax_attnalign.data.classification import (DATASETS, ClassificationDataset,
                                               get_dataset, load_classification)
from jax_attnalign.data.instructions import (BACKDOORLLM_KINDS, backdoorllm_split,
                                             load_instructions)
from jax_attnalign.data.owner import load_clean, load_incoming
from jax_attnalign.data.paths import DATA_ROOT_ENV, data_root, resolve_data_path
from jax_attnalign.data.templates import (ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT,
                                          FALLBACK_CHAT_TEMPLATE, alpaca_prompt, chat_prompt,
                                          classification_chat, classification_messages,
                                          instruction_chat, prompt_text)
from jax_attnalign.data.types import InstructionExample, TextExample

__all__ = ["ALPACA_PROMPT", "ALPACA_PROMPT_NO_INPUT", "BACKDOORLLM_KINDS", "DATASETS",
           "DATA_ROOT_ENV", "data_root", "resolve_data_path",
           "FALLBACK_CHAT_TEMPLATE", "ClassificationDataset", "HubUnreachableError",
           "InstructionExample", "TextExample", "alpaca_prompt", "backdoorllm_split",
           "chat_prompt", "classification_chat", "classification_messages", "encode_classification",
           "encode_prompt_response", "encode_prompts", "get_dataset",
           "instruction_chat", "iterate_batches", "load_classification", "load_instructions",
           "load_clean", "load_incoming", "load_tokenizer", "prompt_text", "unknown_words"]
