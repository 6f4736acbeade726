"""The defense of decoder (SmolLM2) victims, sized for a 2-core CPU.

Differences from experiments/configs/defend.py (the encoders'), none chosen by
looking at a defense result:
  * the causal-LM loss on the defender's clean chat rows, and the
    generation-to-prompt view (the paper's, for decoders) for the head classes
    and the alignment;
  * the detector's view, statistic and layers: see DETECTOR below;
  * two fine-tuning epochs and at most two rounds instead of three and three,
    batches of 8: a SmolLM2 fine-tuning step takes seconds here;
  * the generation baselines (CleanGen, GraCeFul, MuScleLoRA) with their papers'
    settings; MuScleLoRA's epochs, batch size, learning rate and seed are each
    victim's own (experiments.defend_lm);
  * the classifier baselines (Fine-Pruning, MEFT, PURE; chat classifiers only)
    with their papers' rules and our fine-tuning budget (`CleanFineTuning`:
    every column fine-tunes alike): batches of 8 at the uniform rate of our
    fine-tune (the safe heads' 2e-4), for as many epochs as our rounds can run
    in all (max_rounds x epochs = 4, following overrides of either). Their
    first runs had one round's two epochs, half of what our uniform-rate column
    spent on the same victim in its two rounds (docs/lab_notebook/2_decoders.md).

The sanitiser's settings were checked on the refusal tuning victim (VPI seed 0,
trained under its own workdir and reported nowhere), oracle suspects, against
two candidates, by a rule fixed beforehand (lowest ASR among those losing at most
0.02 ROUGE-L): these settings (ASR 1.00 -> 0.00, ROUGE-L 0.281 -> 0.290) beat
the head classes read in the gen_to_prompt_nospecial view (0.13, ROUGE-L 0.245),
with or without `stop="fixed"`; they stand unchanged.

  --config experiments/configs/defend_lm.py            # the paper's method
  --config experiments/configs/defend_lm.py:collapse   # answer-collapse suspects and stop

`collapse` (generation victims): the suspects are the stream prompts whose
answers collapse onto a shared response (`detection.collapse`), less a quarter
of them drawn at random and kept out; the rounds stop once at most 15% of the
kept-out prompts' re-decoded answers still give that response or share
another one among themselves (`pipeline_lm.collapse_flagger`), at most three
rounds. Frozen in docs/lab_notebook/3_answer_collapse.md before it ran on the
victims it is reported on; its first form re-read the suspects themselves
(`--config.setup.watch_share=0`), whose answers overstated the repair.
"""

from jax_attnalign.baselines import BASELINES
from jax_attnalign.defense import HeadRates
from jax_attnalign.detection import collapse
from jax_attnalign.harness.baselines_lm import LM_BASELINES, VICTIM_SCHEDULE
from jax_attnalign.harness.configs import default_config, with_recipe
from jax_attnalign.harness.pipeline_lm import LMDefenseSetup

# Chosen on the tuning victim, SST-2 BadNets seed 0 (experiments.analyze_lm, before
# any defense ran): of the view x statistic pairs that rise on triggered prompts,
# the highest pooled AUROC (gen_to_prompt frac_above 0.67, percentile 0.65; every
# other pair 0.55 or below). Later seeds and the other attacks are held out.
DETECTOR = {"view": "gen_to_prompt", "statistic": "frac_above"}

RECIPES = {
    "": {},
    "collapse": {"setup": {"detector": "answer_collapse", "rescore": "answer_collapse",
                           "watch_share": collapse.WATCH_SHARE},
                 "sanitize": {"stopping": dict(collapse.STOPPING)}},
}


def get_config(recipe: str = ""):
  config = default_config(LMDefenseSetup(), restarts=False, baselines=LM_BASELINES)
  for key in VICTIM_SCHEDULE:  # MuScleLoRA trains with the victim's own schedule
    del config.baselines.muscle_lora[key]
  config.sanitize.update({
      "classify": {"view": "gen_to_prompt"}, "align": {"batch_size": 8},
      "finetune": {"loss": "causal_lm", "epochs": 2, "batch_size": 8, "length_bucket": 16},
      "stopping": {"max_rounds": 2}, "score_batch_size": 8})
  # The classifier baselines fine-tune as ours does, for as many epochs as our
  # rounds can run in all: a reference, so --config.sanitize.finetune.epochs or
  # --config.sanitize.stopping.max_rounds (or a recipe) moves their budget too.
  # One reference each: overriding one baseline's epochs leaves the others'.
  for name in BASELINES:
    config.baselines[name].update({"batch_size": 8, "finetune": {
        "learning_rate": HeadRates().safe, "batch_size": 8}})
    config.baselines[name].finetune.epochs = (
        config.sanitize.finetune.get_ref("epochs")
        * config.sanitize.stopping.get_ref("max_rounds"))
  config.detector.update(DETECTOR)
  return with_recipe(config, RECIPES, recipe, "experiments/configs/defend_lm.py")
