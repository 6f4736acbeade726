"""Input detectors under one interface (`base`): the paper's head-similarity
detector and our head-signal candidates (`heads`), and the baselines STRIP,
ONION, RAP and DAN. Each is fitted on clean data, calibrated at a target
false-positive rate, and scores incoming inputs; `DETECTORS` maps names to them.

>>> sorted(DETECTORS)  # doctest: +NORMALIZE_WHITESPACE
['combined', 'cosine_profile', 'dan', 'entropy_profile', 'importance_profile', 'onion',
 'output_profile', 'paper', 'rap', 'strip']
"""

from jax_attnalign.detection.base import (DETECTORS, Calibration, InputDetector, Victim,
                                          calibrate, make_detector, register)
from jax_attnalign.detection import dan, heads, onion, rap, strip  # register the detectors

__all__ = ["DETECTORS", "Calibration", "InputDetector", "Victim", "calibrate", "dan", "heads",
           "make_detector", "onion", "rap", "register", "strip"]
