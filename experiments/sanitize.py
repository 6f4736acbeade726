r"""The model owner's command: is my checkpoint backdoored? If so, sanitise it.

  python -m experiments.sanitize --model PATH --clean clean.tsv --incoming inputs.txt --out DIR

PATH is any checkpoint we load: a Hugging Face folder (BERT classifier, Llama,
Mistral), a hub id when online, or a GGUF file. --clean holds rows the owner
trusts: a TSV of text and label for a classifier, Alpaca-format JSON records
(instruction, input, output) for a chat model. --incoming holds what the deployed
model received (one input per line, a TSV/CSV with a 'sentence' or 'text' column,
or JSON). Prints the verdict with its evidence; a positive verdict sanitises the
model with the flagged inputs and writes it with its tokenizer to DIR/model.
A classifier's incoming inputs are read by the paper's head statistic, or with
--encoder_detector=crowding by head-output crowding across the stream (it sees
sentence-level triggers but false-alarms when the clean rows come from another
source than the incoming inputs); a chat model's prompts by answer collapse
unless --decoder_detector=heads (jax_attnalign.audit).
Without --incoming it writes a scan of the model's heads. DIR gets report.md,
audit.json (or scan.json) and scores.png.
"""

from __future__ import annotations

from absl import app, flags

import experiments
from jax_attnalign import audit, data

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiments)  # --data_root and other shared flags in --help
flags.DEFINE_string("model", None, "Checkpoint: HF folder, hub id or GGUF file.", required=True)
flags.DEFINE_string("clean", None, "Clean rows the owner trusts (TSV with labels, or "
                    "Alpaca JSON for chat models).", required=True)
flags.DEFINE_string("incoming", None, "Inputs the model received (default: scan only).")
flags.DEFINE_string("out", "workdir/sanitize", "Output folder.")
flags.DEFINE_float("alpha", 0.01, "Alarm when the verdict's p-value is below this.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("seed", 0, "Seed of the clean rows' held-out split and the defense.",
                     lower_bound=0)
flags.DEFINE_integer("max_length", 64, "Classifier tokens per input.", lower_bound=2)
flags.DEFINE_enum("decoder_detector", "answer_collapse", ["answer_collapse", "heads"],
                  "What reads a chat model's incoming prompts: its answers (near-duplicate "
                  "answers across the stream) or its heads (the paper's statistic).")
flags.DEFINE_enum("encoder_detector", "heads", ["heads", "crowding"],
                  "What reads a classifier's incoming inputs: the paper's per-input head "
                  "statistic, or head-output crowding across the stream (sees sentence-level "
                  "triggers; needs at least 10 inputs and clean rows from the same source).")
flags.DEFINE_integer("max_rounds", None, "Sanitisation rounds at most (default: 3, or 2 "
                     "for a chat model read by its heads).", lower_bound=1)


def main(argv):
  del argv
  experiments.use_data_root()
  cfg = audit.AuditConfig(alpha=FLAGS.alpha, seed=FLAGS.seed, max_length=FLAGS.max_length,
                          max_rounds=FLAGS.max_rounds, decoder_detector=FLAGS.decoder_detector,
                          encoder_detector=FLAGS.encoder_detector)
  incoming = data.load_incoming(FLAGS.incoming) if FLAGS.incoming else None
  result = audit.audit_checkpoint(FLAGS.model, data.load_clean(FLAGS.clean), incoming,
                                  FLAGS.out, cfg)
  if result.verdict is None:
    print(f"scan only (no --incoming): {FLAGS.out}/report.md")
    return
  print(result.verdict.line())
  for i, text in enumerate(result.flagged_texts[:10]):
    print(f"  flagged {i + 1}: {text[:100]}")
  if result.sanitize_report is not None:
    print(f"sanitised model (with tokenizer): {FLAGS.out}/model")
  print(f"report: {FLAGS.out}/report.md")


if __name__ == "__main__":
  app.run(main)
