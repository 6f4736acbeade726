r"""Writes the trigger cache of Cbat, BGMAttack, NWS or HiddenKillerLM with SmolLM2.

Cbat: a pool of exclamatory sentences. BGMAttack (rewrites), NWS (substitutions)
and HiddenKillerLM (rewrites into HiddenKiller's syntactic template, for datasets
without released SCPN paraphrases): the training rows the victims of the given
seeds will poison (victims' training subset and poison rate) and up to
--test_rows non-target test rows; rows the file already has are kept, and the file is written every 256
rows, so an interrupted run picks up where it stopped (jax_attnalign.harness.triggers).

  python -m experiments.make_triggers --attack=bgm --data_dir=sst2/clean \
      --dataset=sst2 --out=triggers/sst2/bgm.json --victim_seeds=0,1,2

The attacks read the file: Cbat(sentences_path=...), BGMAttack(rewrites_path=...),
NWS(substitutes_path=...), HiddenKillerLM(rewrites_path=...).
"""

from __future__ import annotations

from absl import app, flags

import experiments
from jax_attnalign.harness.triggers import TriggerJob, update_trigger_cache

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiments)  # --data_root and other shared flags in --help
flags.DEFINE_enum("attack", None, ["cbat", "bgm", "nws", "hiddenkiller_lm"],
                  "The attack whose cache to write.")
flags.DEFINE_string("out", None, "The cache file (JSON).")
flags.DEFINE_string("data_dir", "sst2/clean", "Folder with train/test.tsv.")
flags.DEFINE_string("dataset", "sst2", "sst2 or ag_news (prompts, text style, labels).")
flags.DEFINE_string("model", "", "Causal LM checkpoint or GGUF (default: bundled SmolLM2).")
flags.DEFINE_integer("seed", 0, "Generation seed.", lower_bound=0)
flags.DEFINE_integer("samples", 256, "Cbat: sentences sampled before the filter.",
                     lower_bound=1)
flags.DEFINE_integer("target", 1, "The victims' target label.", lower_bound=0)
flags.DEFINE_integer("train_size", 3000, "The victims' training subset size (0: all).",
                     lower_bound=0)
flags.DEFINE_float("poison_rate", 0.2, "The victims' poison rate.", lower_bound=0.0,
                   upper_bound=1.0)
flags.DEFINE_list("victim_seeds", ["0"], "The victims' seeds (their subsets and rows).")
flags.DEFINE_integer("test_rows", 600, "Non-target test rows to trigger (0: all).",
                     lower_bound=0)
flags.DEFINE_integer("batch_size", 32, "Prompts per generation batch.", lower_bound=1)
flags.mark_flags_as_required(["attack", "out"])


def main(argv):
  del argv
  experiments.use_data_root()
  update_trigger_cache(TriggerJob(
      attack=FLAGS.attack, out=FLAGS.out, data_dir=FLAGS.data_dir, dataset=FLAGS.dataset,
      model=FLAGS.model, seed=FLAGS.seed, samples=FLAGS.samples, target=FLAGS.target,
      train_size=FLAGS.train_size, poison_rate=FLAGS.poison_rate,
      victim_seeds=tuple(int(s) for s in FLAGS.victim_seeds), test_rows=FLAGS.test_rows,
      batch_size=FLAGS.batch_size))


if __name__ == "__main__":
  app.run(main)
