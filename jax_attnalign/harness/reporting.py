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


# Before/after columns of a decoder defense table, when the victims report them.
LM_DEFENSE_METRICS = ("asr", "ca", "clean_target_rate", "answered", "rouge_l")


def lm_defense_table(rows: list[dict]) -> tuple[str, dict]:
  """(markdown, bars for plots.plot_metric_bars) of experiments.defend_lm's rows (its
  defend_lm.json), grouped by task, attack and variant, mean ± std over seeds."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault((row["task"], row["attack"], row["variant"]), []).append(row)
  columns = [c for c in LM_DEFENSE_METRICS if any(c in r["before"] for r in rows)]
  lines = ["| task | attack | variant | " + " | ".join(f"{c} before -> after" for c in columns)
           + " | detector AUROC | suspects (triggered) | seeds |", "|---" * (len(columns) + 6)
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
    suspects = ", ".join(f"{d['suspects']} ({d['suspects_triggered']})" for d in found)
    lines.append(f"| {task} | {attack} | {variant} | " + " | ".join(cells)
                 + f" | {detected} | {suspects or '—'} | "
                 + f"{', '.join(str(r['seed']) for r in runs)} |")
    bars[f"{attack}\n{variant}"] = {f"{c} after": get("after", c) for c in columns[:2]}
  return "\n".join(lines), bars


def write_victims_summary(workdir: pathlib.Path, title: str) -> str:
  """summary.json ({attack: {'runs': [...], metric: (mean, std)}}), summary.md and
  summary.png of every finished victim under `workdir` (its */result.json, so runs
  from earlier calls with other attacks or seeds stay in), by attack (mean ± std
  over seeds); returns the markdown table under a line naming the sets measured."""
  results: dict[str, list[dict]] = {}
  for result in sorted(pathlib.Path(workdir).glob("*/result.json")):
    run = json.loads(result.read_text())
    results.setdefault(run["config"]["attack"], []).append(run)
  columns = [m for m in VICTIM_METRICS
             if any(m in r for runs in results.values() for r in runs)]
  summary = {attack: {"runs": runs, **{m: metrics.mean_std([r[m] for r in runs if m in r])
                                        for m in columns if any(m in r for r in runs)}}
             for attack, runs in results.items()}
  every = [r for runs in results.values() for r in runs]
  table = (f"{title}, mean ± std over seeds: ASR on the "
           f"{count_range(r['triggered_rows'] for r in every if r.get('triggered_rows'))} "
           "triggered test rows (true label not the target; partial_target_rate on as many "
           "partly triggered ones), the other metrics on the "
           f"{count_range(r['test_rows'] for r in every if 'test_rows' in r)} clean test rows"
           "\n\n" + victims_table(results))
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
  (workdir / "summary.md").write_text(f"{table}\n")
  plots.plot_metric_bars({a: {m: [r[m] for r in runs if m in r] for m in columns}
                          for a, runs in results.items()}, workdir / "summary.png",
                         title=f"{title} (mean ± std over seeds)")
  return table


def find_victims(victims_dir: str | pathlib.Path, attacks: list[str] | None = None
                 ) -> list[tuple[str, pathlib.Path, dict]]:
  """(run name, run directory, victim config) of every backdoored victim written
  by `experiments.attack` under `victims_dir` (clean references skipped)."""
  found = []
  for result in sorted(pathlib.Path(victims_dir).glob("*/result.json")):
    cfg = json.loads(result.read_text())["config"]
    if cfg["attack"] != "clean" and (not attacks or cfg["attack"] in attacks):
      found.append((result.parent.name, result.parent, cfg))
  if not found:
    raise FileNotFoundError(
        f"No backdoored victim (*/result.json with model/) under {victims_dir}; "
        "train some with `python -m experiments.attack --workdir DIR`.")
  return found


def victim_setup(config, run_dir: pathlib.Path, victim_cfg: dict, **overrides):
  """The DefenseSetup of a victim run: its data, attack, target and seed."""
  return defense_setup(config, **{
      "victim": str(run_dir / "model"), "data_dir": victim_cfg["data_dir"],
      "dataset": victim_cfg["dataset"], "attack": victim_cfg["attack"],
      "attack_kwargs": dict(victim_cfg["attack_kwargs"]), "target": victim_cfg["target"],
      "seed": victim_cfg["seed"], **overrides})


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
    rows.append({"victim": run, "attack": victim_cfg["attack"],
                 "dataset": victim_cfg["dataset"], "variant": name,
                 "seed": victim_cfg["seed"], "inputs": result.get("inputs", {}),
                 **{k: result[k] for k in ("before", "after", "detection", "wall_s")
                    if k in result}})
  return rows


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
                      name: str, title: str, *, columns: bool = False) -> None:
  """What every defense binary does: `run_variants`, then `write_summary` (with
  `columns`: the variants side by side, `columns_table`) and print it."""
  workdir = pathlib.Path(workdir)
  rows = run_variants(victims, variants, config, workdir)
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


def columns_table(rows: list[dict], columns: list[str]) -> str:
  """Markdown of Table 2: per dataset and attack, CA and ASR (mean ± std over
  seeds) of vanilla (the victims before any defense) and of each column, and
  beneath, the paper's BERT numbers where it gives them. Bold: the lowest mean
  ASR among the columns whose mean CA is within CA_TOLERANCE of vanilla's."""
  fmt = metrics.format_mean_std
  groups: dict[tuple, dict[str, list[dict]]] = {}
  for row in rows:
    groups.setdefault((row["dataset"], row["attack"]), {}).setdefault(
        row["variant"], []).append(row)
  lines = ["| dataset | attack | " + " | ".join(f"{c} CA | {c} ASR"
                                                for c in ["vanilla", *columns])
           + " | seeds |", "|---" * (2 * len(columns) + 5) + "|"]
  for (dataset, attack), by_column in groups.items():
    vanilla = list({r["victim"]: r["before"] for runs in by_column.values()
                    for r in runs}.values())  # one per victim
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
