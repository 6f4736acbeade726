"""The paper's baseline defenses, one function each; what the defender holds is in its signature.

  fine_pruning(model, params, clean_train, clean_val, config) -> (params, report)
  meft(model, params, clean_train, clean_val, config)         -> (params, report)
  pure(model, params, clean_train, clean_val, config)         -> (params, report)

All three need clean *labelled* rows of the task (a training split to fine-tune
on, a validation split to rank and to bound accuracy); none needs suspects, the
poisoned training set or a reference model. Each is jit-compiled (one compiled
train step per run, `train.fit`) and, given a `workdir`, resumes after an
interruption (orbax checkpoints in the workdir's `CHECKPOINTS` subfolders,
beside the JSON of its pruning decision). `BASELINES` maps a name to
(function, config class).

The generation baselines of Table 2(b), for decoders, hold other assets:

  cleangen_responses(model, victim_params, reference_params, tokenizer, prompts, config)
      decoding time: the victim's tokens checked against a reference model's
  muscle_lora(model, pretrained_params, poisoned_train, clean, config) -> (params, report)
      training time: LoRA with radial scalings, gradients aligned to clean rows
  graceful_filter(model, pretrained_params, poisoned_train, config) -> (keep, report)
      training time: the poisoned training rows flagged by their gradients, to retrain without

>>> from jax_attnalign.baselines import BASELINES
>>> sorted(BASELINES)
['fine_pruning', 'meft', 'pure']
"""

from jax_attnalign.baselines.cleangen import CleanGenConfig, cleangen_generate, cleangen_responses
from jax_attnalign.baselines.fine_pruning import FinePruningConfig, fine_pruning
from jax_attnalign.baselines.finetune import CleanFineTuning
from jax_attnalign.baselines.graceful import GraCeFulConfig, graceful_filter
from jax_attnalign.baselines.meft import MEFTConfig, meft
from jax_attnalign.baselines.muscle_lora import MuScleLoRAConfig, muscle_lora
from jax_attnalign.baselines.pure import PUREConfig, pure

BASELINES = {"fine_pruning": (fine_pruning, FinePruningConfig), "meft": (meft, MEFTConfig),
             "pure": (pure, PUREConfig)}
# Where the three checkpoint their fine-tunes within their workdir (MEFT's first
# phase: max_entropy); nothing reads them once the run has returned.
CHECKPOINTS = ("finetune", "max_entropy")

__all__ = ["BASELINES", "CHECKPOINTS", "CleanFineTuning", "CleanGenConfig", "FinePruningConfig",
           "GraCeFulConfig", "MEFTConfig", "MuScleLoRAConfig", "PUREConfig", "cleangen_generate",
           "cleangen_responses", "fine_pruning", "graceful_filter", "meft", "muscle_lora", "pure"]
