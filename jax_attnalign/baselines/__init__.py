"""The paper's baseline defenses, one function each; what the defender holds is in its signature.

  fine_pruning(model, params, clean_train, clean_val, config) -> (params, report)
  meft(model, params, clean_train, clean_val, config)         -> (params, report)
  pure(model, params, clean_train, clean_val, config)         -> (params, report)

All three need clean *labelled* rows of the task (a training split to fine-tune
on, a validation split to rank and to bound accuracy); none needs suspects, the
poisoned training set or a reference model. Each is jit-compiled (one compiled
train step per run, `train.fit`) and, given a `workdir`, resumes after an
interruption. `BASELINES` maps a name to (function, config class).

>>> from jax_attnalign.baselines import BASELINES
>>> sorted(BASELINES)
['fine_pruning', 'meft', 'pure']
"""

from jax_attnalign.baselines.fine_pruning import FinePruningConfig, fine_pruning
from jax_attnalign.baselines.finetune import CleanFineTuning
from jax_attnalign.baselines.meft import MEFTConfig, meft
from jax_attnalign.baselines.pure import PUREConfig, pure

BASELINES = {"fine_pruning": (fine_pruning, FinePruningConfig), "meft": (meft, MEFTConfig),
             "pure": (pure, PUREConfig)}

__all__ = ["BASELINES", "CleanFineTuning", "FinePruningConfig", "MEFTConfig", "PUREConfig",
           "fine_pruning", "meft", "pure"]
