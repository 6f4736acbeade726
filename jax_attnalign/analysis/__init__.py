"""Pure functions over captured attention: head similarity, importance, safety."""

from jax_attnalign.analysis.importance import (head_gate_gradients, head_importance,
                                               normalize_importance, self_labelled_answers)
from jax_attnalign.analysis.safety import (EmptySafeSetError, HeadClass, class_counts,
                                           classify_heads, require_safe_heads,
                                           safety_scores)
from jax_attnalign.analysis.similarity import head_cosine, pair_statistics

__all__ = ["EmptySafeSetError", "HeadClass", "class_counts", "classify_heads",
           "head_cosine", "head_gate_gradients", "head_importance",
           "normalize_importance", "pair_statistics", "require_safe_heads",
           "safety_scores", "self_labelled_answers"]
