"""The defense: the online detector, alignment, the head-wise optimizer, and the
sanitisation rounds that chain them (`sanitize`, `sanitize_restarts`).

>>> from jax_attnalign.defense import SanitizeConfig, Stopping
>>> SanitizeConfig(stopping=Stopping(max_rounds=1)).stages
('align', 'finetune')
"""

from jax_attnalign.defense.alignment import (alignment_loss, alignment_optimizer,
                                             alignment_rates, alignment_step)
from jax_attnalign.defense.detector import (Detector, DetectorConfig, calibrate_detector,
                                            input_scores)
from jax_attnalign.defense.headwise import HeadRates, headwise_init, headwise_optimizer
from jax_attnalign.defense.restarts import RestartConfig, sanitize_restarts
# After restarts, which imports it. `sanitize` here is the function; the module
# stays importable as `jax_attnalign.defense.sanitize` (from ... import works).
from jax_attnalign.defense.sanitize import (Alignment, FineTuning, HeadClassification,
                                            SanitizeConfig, Stopping, flagged_inputs,
                                            sanitize, scores_of)

__all__ = ["Alignment", "Detector", "DetectorConfig", "FineTuning", "HeadClassification",
           "HeadRates", "RestartConfig", "SanitizeConfig", "Stopping", "alignment_loss",
           "alignment_optimizer", "alignment_rates", "alignment_step", "calibrate_detector",
           "flagged_inputs", "headwise_init", "headwise_optimizer", "input_scores",
           "sanitize", "sanitize_restarts", "scores_of"]
