"""The defense with DESIGN.md's defaults (view, rates, rounds, detector), or a named recipe.

  --config experiments/configs/defend.py            # the paper's method, one run
  --config experiments/configs/defend.py:restarts   # the README's BadNets recipe

`restarts`: three runs of the default (sanitiser seeds 0, 1, 2), three rounds each,
and every round of every run a candidate for the label-free rule of
`defense.sanitize_restarts` (nine rounds per victim instead of one to three).
"""

from jax_attnalign.harness.configs import default_config, with_recipe

RECIPES = {
    "": {},
    "restarts": {"sanitize": {"stopping": {"stop": "fixed", "max_rounds": 3}},
                 "restarts": {"runs": 3, "every_round": True}},
}


def get_config(recipe: str = ""):
  return with_recipe(default_config(), RECIPES, recipe, "experiments/configs/defend.py")
