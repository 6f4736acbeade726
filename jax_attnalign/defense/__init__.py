"""The defense: alignment, the head-wise optimizer, the online detector (rounds: defense.sanitize)."""

from jax_attnalign.defense.alignment import (alignment_loss, alignment_optimizer,
                                             alignment_rates, alignment_step)
from jax_attnalign.defense.detector import (Detector, DetectorConfig, calibrate_detector,
                                            input_scores)
from jax_attnalign.defense.headwise import HeadRates, headwise_init, headwise_optimizer
from jax_attnalign.defense.restarts import RestartConfig, sanitize_restarts

__all__ = ["Detector", "DetectorConfig", "HeadRates", "RestartConfig", "alignment_loss",
           "alignment_optimizer", "alignment_rates", "alignment_step", "calibrate_detector",
           "headwise_init", "headwise_optimizer", "input_scores", "sanitize_restarts"]
