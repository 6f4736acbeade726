"""What the experiment binaries share: victims' attack settings and summaries,
finding victims, running defense variants (ours and the baselines), writing results
(JSON, markdown, plots), and Table 2's columns beside the paper's numbers."""

from __future__ import annotations

import json
import pathlib
from typing import Callable, Sequence

import numpy as np
import tqdm
from absl import logging

from jax_attnalign import data, metrics, plots
from jax_attnalign.data.files import write_json
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


def train_victims(train: Callable[[str, int, pathlib.Path], dict], attacks: Sequence[str],
                  seeds: Sequence[int | str], workdir: pathlib.Path, title: str) -> str:
  """Trains one victim per (attack, seed) with `train(attack, seed, workdir)` (it
  resumes or skips finished runs), then returns `write_victims_summary`'s table."""
  for attack in attacks:
    for seed in seeds:
      train(attack, int(seed), workdir)
  return write_victims_summary(workdir, title)


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
  write_json(workdir / "summary.json", summary, default=str)
  (workdir / "summary.md").write_text(f"{table}\n")
  plots.plot_metric_bars({key: {m: [r[m] for r in group if m in r] for m in columns}
                          for key, group in results.items()}, workdir / "summary.png",
                         title=f"{title} (mean ± std over seeds)")
  return table


def runs_in(victims_dir) -> list[tuple[str, pathlib.Path, dict]]:
  """(run name, run directory, config) of every model `experiments.attack` or
  `attack_lm` wrote under `victims_dir`, clean references included."""
  return [(result.parent.name, result.parent, json.loads(result.read_text())["config"])
          for result in sorted(pathlib.Path(victims_dir).glob("*/result.json"))]


def _victims_in(victims_dir, attacks=None, seeds=None) -> list[tuple[str, pathlib.Path, dict]]:
  return [(run, run_dir, cfg) for run, run_dir, cfg in runs_in(victims_dir)
          if cfg["attack"] != "clean" and (not attacks or cfg["attack"] in attacks)
          and (not seeds or str(cfg["seed"]) in map(str, seeds))]


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
  several = len({dataset for dataset, _, _ in groups}) > 1  # then bars name the dataset
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
    label = f"{dataset} {attack}" if several else attack
    bars[f"{label}\n{variant}"] = {"CA after": get("after", "ca"), "ASR after": get("after", "asr"),
                                   "ASR before": get("before", "asr")}
  size = lambda key: count_range(r["inputs"][key] for r in rows if key in r["inputs"])
  table = (f"{title}, mean ± std over seeds: CA on each victim's {size('held_clean')} "
           f"held-out clean test inputs, ASR on its {size('held_triggered')} held-out "
           f"triggered ones; detector AUROC and suspects on its monitored stream of "
           f"{size('stream')} test inputs\n\n"
           + (f"{columns_table(rows, columns)}\n\n" if columns else "") + "\n".join(lines))
  workdir.mkdir(parents=True, exist_ok=True)
  write_json(workdir / f"{name}.json", rows, default=str)
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


def paper_columns(table: dict[tuple, tuple], columns) -> dict[tuple, dict[str, tuple]]:
  """A paper table given as percentages, each row (clean score, ASR) per column in
  `columns` order, as {row key: {column: (clean score, ASR) as fractions}}.

  >>> paper_columns({("sst2", "badnets"): (92.5, 99.0, 91.0, 11.0)}, ("vanilla", "ours"))
  {('sst2', 'badnets'): {'vanilla': (0.925, 0.99), 'ours': (0.91, 0.11)}}
  """
  return {key: {column: (values[2 * i] / 100, values[2 * i + 1] / 100)
                for i, column in enumerate(columns)}
          for key, values in table.items()}


PAPER_TABLE2_BERT = paper_columns(_PAPER_BERT, _PAPER_COLUMNS)
# A stand-in attack is compared with the paper's row of the attack it stands in for.
PAPER_ATTACK = {"hiddenkiller_lm": "hiddenkiller"}


def paper_bert_row(dataset: str, attack: str) -> dict[str, tuple] | None:
  """The paper's Table 2(a) BERT row for `attack` on `dataset` (PAPER_TABLE2_BERT),
  or None where the paper has none."""
  return PAPER_TABLE2_BERT.get((dataset, PAPER_ATTACK.get(attack, attack)))


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
    paper = paper_bert_row(dataset, attack)
    if paper:
      lines.append(f"| {dataset} | {attack} (paper, BERT) | " + " | ".join(
          f"{paper[c][0]:.4f} | {paper[c][1]:.4f}" if c in paper else "— | —"
          for c in ["vanilla", *columns]) + " | 5 runs |")
  note = (f"Bold: the lowest mean ASR among the columns whose mean CA is within "
          f"{CA_TOLERANCE:.2f} of vanilla's. Paper rows: Table 2(a), BERT-base (ours: "
          "MiniLM or smaller); its one column for our method sits under the detector's.")
  return "\n".join(lines) + "\n\n" + note
