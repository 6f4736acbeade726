"""Input detectors under one interface (`base`): the paper's head-similarity
detector and our head-signal candidates (`heads`), and the baselines STRIP,
ONION, RAP and DAN. Each is fitted on clean data, calibrated at a target
false-positive rate, and scores incoming inputs; `DETECTORS` maps names to them.
"""

from jax_attnalign.detection.base import (DETECTORS, Calibration, InputDetector, Victim,
                                          calibrate, make_detector, register)

__all__ = ["DETECTORS", "Calibration", "InputDetector", "Victim", "calibrate", "make_detector",
           "register"]
