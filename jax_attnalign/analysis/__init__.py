"""Pure functions over captured attention: head similarity, importance, safety."""

from jax_attnalign.analysis.importance import (head_gate_gradients, head_importance,
                                               normalize_importance, self_labelled_answers)
from jax_attnalign.analysis.safety import (EmptySafeSetError, HeadClass, class_counts,
                                           classify_heads, require_safe_heads,
                                           safety_scores)
from jax_attnalign.analysis.similarity import (head_cosine, head_similarity,
                                               max_other_similarity, pair_statistics)
from jax_attnalign.analysis.streaming import streaming_head_similarity
from jax_attnalign.analysis.views import VIEWS, View, extract_view, resolve_view

__all__ = ["EmptySafeSetError", "HeadClass", "VIEWS", "View", "class_counts",
           "classify_heads", "extract_view", "head_cosine", "head_gate_gradients",
           "head_importance", "head_similarity", "max_other_similarity",
           "normalize_importance", "pair_statistics", "require_safe_heads",
           "resolve_view", "safety_scores", "self_labelled_answers",
           "streaming_head_similarity"]
