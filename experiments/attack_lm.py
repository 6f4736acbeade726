r"""Backdoors decoder victims: fine-tunes the bundled SmolLM2 on poisoned chat data.

For each attack in --attacks (and 'clean', the reference) and each seed, trains
a victim of --task (jax_attnalign.harness.victims_lm), then writes per-run result.json,
a summary JSON, a markdown table and a bar plot (mean ± std over seeds) to
--workdir. Interrupted runs resume; finished runs are not repeated.

  python -m experiments.attack_lm --task classification --data_dir sst2/clean \
      --attacks clean,badnets --seeds 0 --workdir runs/lm_sst2
  python -m experiments.attack_lm --task refusal --data_dir backdoorllm \
      --alpaca_path alpaca/alpaca_small_2000.json --attacks clean,vpi \
      --max_length 192 --workdir runs/lm_refusal
"""

from __future__ import annotations

import pathlib

from absl import app, flags

import experiments
from jax_attnalign.harness import reporting
from jax_attnalign.harness.victims_lm import TASKS, LMVictimConfig, train_lm_victim

experiments.define_hiddenkiller_flags()
FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiments)  # --data_root and other shared flags in --help
flags.DEFINE_enum("task", "classification", TASKS, "What the victim is fine-tuned for.")
flags.DEFINE_string("data_dir", "sst2/clean",
                    "classification: folder with train/test.tsv; refusal/negsentiment: "
                    "the BackdoorLLM folder.")
flags.DEFINE_string("alpaca_path", "", "refusal/negsentiment: more clean Alpaca records.")
flags.DEFINE_string("dataset", "sst2", "classification: sst2 or ag_news (labels, prompt).")
flags.DEFINE_string("model", "", "Checkpoint (HF folder or GGUF; default: bundled SmolLM2).")
flags.DEFINE_list("attacks", ["clean", "badnets"], "Attacks ('clean' = no attack).")
flags.DEFINE_list("seeds", ["0"], "Seeds.")
flags.DEFINE_float("poison_rate", 0.2, "Share of poisoned training rows.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("train_size", 1000, "Training rows (a seeded subset; 0: all).", lower_bound=0)
flags.DEFINE_integer("test_size", 600, "Clean and triggered test inputs each (0: all).",
                     lower_bound=0)
flags.DEFINE_integer("epochs", 1, "Fine-tuning epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", 8, "Rows per step.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-4, "Peak AdamW learning rate.", lower_bound=0.0)
flags.DEFINE_integer("max_length", 112, "Prompt + response tokens of a training row.",
                     lower_bound=2)
flags.DEFINE_integer("max_new_tokens", 48, "Generated tokens per test prompt (generation).",
                     lower_bound=1)
flags.DEFINE_integer("length_bucket", 16,
                     "Training rows are padded to a multiple of this many tokens, one compiled "
                     "step per padded length; on a GPU, where compiling dominates, --max_length "
                     "compiles one.", lower_bound=1)
flags.DEFINE_string("workdir", "workdir/attack_lm", "Output folder.")


def train(attack: str, seed: int, workdir: pathlib.Path) -> dict:
  cfg = LMVictimConfig(
      task=FLAGS.task, attack=attack, data_dir=FLAGS.data_dir, alpaca_path=FLAGS.alpaca_path,
      model=FLAGS.model, dataset=FLAGS.dataset,
      attack_kwargs=reporting.attack_kwargs(attack, FLAGS.hiddenkiller_dir,
                                            FLAGS.hiddenkiller_poison_rate),
      poison_rate=FLAGS.poison_rate, train_size=FLAGS.train_size, test_size=FLAGS.test_size,
      epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
      max_length=FLAGS.max_length, max_new_tokens=FLAGS.max_new_tokens,
      length_bucket=FLAGS.length_bucket, seed=seed)
  return train_lm_victim(cfg, workdir / f"{FLAGS.task}_{attack}_seed{seed}")


def main(argv):
  del argv
  experiments.use_data_root()
  print(reporting.train_victims(train, FLAGS.attacks, FLAGS.seeds,
                                pathlib.Path(FLAGS.workdir), "SmolLM2 victims"))


if __name__ == "__main__":
  app.run(main)
