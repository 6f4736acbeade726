"""Input detectors under one interface (`base`): the paper's head-similarity
detector and our head-signal candidates (`heads`), the baselines STRIP, ONION,
RAP and DAN, and two that read a monitored stream: head-output crowding
(`crowding`) and, for generation victims, answer collapse (`collapse`). Each is
fitted on clean data, calibrated at a target false-positive rate, and scores
incoming inputs; `DETECTORS` maps names to them.
An encoder classifier is a `Victim`; a chat decoder (a SmolLM2 Listing-1
classifier, or a generation victim without classes) a `chat.ChatVictim`.

>>> sorted(DETECTORS)  # doctest: +NORMALIZE_WHITESPACE
['answer_collapse', 'combined', 'cosine_profile', 'crowding', 'dan', 'entropy_profile',
 'importance_profile', 'onion', 'output_profile', 'paper', 'rap', 'strip']
"""

from jax_attnalign.detection.base import (DETECTORS, Calibration, InputDetector, Victim,
                                          calibrate, make_detector, needs_answers,
                                          needs_classes, register)
from jax_attnalign.detection import (chat, collapse, crowding, dan, heads, onion,  # register
                                     rap, strip)
from jax_attnalign.detection.chat import ChatVictim

__all__ = ["DETECTORS", "Calibration", "ChatVictim", "InputDetector", "Victim", "calibrate",
           "chat", "collapse", "crowding", "dan", "heads", "make_detector", "needs_answers",
           "needs_classes", "onion", "rap", "register", "strip"]
