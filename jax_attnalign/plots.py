"""Pictures of head similarity: a heatmap, and clean vs triggered (paper Figure 1).

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global
backend switch), written as PNG, and the path comes back.
"""

from __future__ import annotations

import os
import pathlib
import textwrap
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PathLike = str | os.PathLike
# Axis labels of the detector's per-input statistics of pairwise head cosine.
STATISTIC_LABELS = {"frac_above": "share of head pairs with cosine > 0.99",
                    "percentile": "99th percentile of head-pair cosine",
                    "mean": "mean head-pair cosine"}


def _legend_outside(ax) -> None:
  """The legend right of the axes, where it covers no data."""
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
            fontsize="small")


def _save(fig: Figure, path: PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  FigureCanvasAgg(fig)
  fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
  return path


def plot_similarity_heatmap(cosine, path: PathLike, *, title: str | None = None,
                            heads_per_layer: int | None = None) -> pathlib.Path:
  """Heatmap of one head-by-head cosine matrix [M, M] (a layer's, or model-wide).

  heads_per_layer: for a model-wide matrix ordered (layer, head), draws the layer
  boundaries. Returns the PNG path.
  """
  cosine = np.asarray(cosine, np.float32)
  if cosine.ndim != 2 or cosine.shape[0] != cosine.shape[1]:
    raise ValueError(f"Expected one square cosine matrix [M, M], got {cosine.shape}.")
  fig = Figure(figsize=(5.5, 4.5))
  ax = fig.add_subplot()
  image = ax.imshow(cosine, cmap="viridis", vmin=min(0.0, float(cosine.min())), vmax=1.0,
                    interpolation="nearest")
  fig.colorbar(image, ax=ax, label="cosine similarity")
  if heads_per_layer:
    for edge in np.arange(heads_per_layer, cosine.shape[0], heads_per_layer) - 0.5:
      ax.axhline(edge, color="white", linewidth=0.6)
      ax.axvline(edge, color="white", linewidth=0.6)
  ax.set_xlabel("head")
  ax.set_ylabel("head")
  ax.set_title(title or "head-by-head cosine similarity")
  return _save(fig, path)


def clean_vs_triggered_figure(clean, triggered, *, layers: Sequence[int] | None = None,
                              ylabel: str = "head pairs with cosine > 0.99",
                              title: str | None = None) -> Figure:
  """Figure-1-style comparison: a per-layer statistic, clean vs triggered inputs.

  clean: [B_clean, L] and triggered: [B_triggered, L], one value per input and
  layer (e.g. `pair_statistics(cos)['frac_above']`); layers: the model's index of
  each of the L columns (a view of the last layers: `View.layer_indices`),
  default 0..L-1. Draws side-by-side box plots per layer with the means marked.
  """
  clean, triggered = np.asarray(clean, np.float64), np.asarray(triggered, np.float64)
  if clean.ndim != 2 or triggered.ndim != 2 or clean.shape[1] != triggered.shape[1]:
    raise ValueError(f"Expected [B, L] arrays with the same L, got {clean.shape} "
                     f"and {triggered.shape}.")
  names = list(range(clean.shape[1]) if layers is None else layers)
  if len(names) != clean.shape[1]:
    raise ValueError(f"{len(names)} layer indices for {clean.shape[1]} layers of values.")
  slots = np.arange(len(names))
  fig = Figure(figsize=(max(5.0, 0.6 * len(slots) + 2.0), 4.0))
  ax = fig.add_subplot()
  for values, offset, color, label in ((clean, -0.18, "tab:blue", "clean"),
                                       (triggered, 0.18, "tab:red", "triggered")):
    ax.boxplot(values, positions=slots + offset, widths=0.3, patch_artist=True,
               showfliers=False, boxprops=dict(facecolor=color, alpha=0.35),
               medianprops=dict(color=color))
    ax.plot(slots + offset, values.mean(axis=0), "o", color=color,
            label=f"{label} (mean of {len(values)} inputs)")
  ax.set_xticks(slots, [str(l) for l in names])
  ax.set_xlabel("layer")
  ax.set_ylabel(ylabel)
  ax.set_title(title or "clean vs triggered inputs")
  _legend_outside(ax)
  return fig


def plot_clean_vs_triggered(clean, triggered, path: PathLike, **kwargs) -> pathlib.Path:
  """`clean_vs_triggered_figure(clean, triggered, **kwargs)` written to `path`."""
  return _save(clean_vs_triggered_figure(clean, triggered, **kwargs), path)


def metric_bars_figure(runs: dict[str, dict[str, list[float]]], *,
                       title: str | None = None, ylabel: str = "score (0 to 1)") -> Figure:
  """Grouped bars of metrics (e.g. CA, ASR) per setting: the mean, with a std
  error bar (ddof=1) where there are several values (seeds), none for one.

  runs: {setting: {metric: [value per seed]}}.
  """
  settings = list(runs)
  metrics = sorted({m for values in runs.values() for m in values})
  labels = ["\n".join(textwrap.fill(line, 15) for line in s.split("\n")) for s in settings]
  lines = max(label.count("\n") + 1 for label in labels) if labels else 1
  fig = Figure(figsize=(1.2 + 1.3 * len(settings), 3.2 + 0.15 * lines))
  ax = fig.add_subplot()
  width = 0.8 / max(len(metrics), 1)
  for k, metric in enumerate(metrics):
    xs = np.arange(len(settings)) + (k - (len(metrics) - 1) / 2) * width
    values = [runs[s].get(metric, []) for s in settings]
    means = np.array([np.mean(v) if v else np.nan for v in values])
    ax.bar(xs, means, width, label=metric)
    several = np.array([len(v) > 1 for v in values])
    if several.any():
      ax.errorbar(xs[several], means[several],
                  yerr=[np.std(v, ddof=1) for v in values if len(v) > 1], fmt="none",
                  ecolor="black", capsize=3)
  ax.set_xticks(range(len(settings)), labels, fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel(ylabel)
  _legend_outside(ax)
  if title:
    ax.set_title(title)
  return fig


def plot_metric_bars(runs: dict[str, dict[str, list[float]]], path: PathLike,
                     **kwargs) -> pathlib.Path:
  """`metric_bars_figure(runs, **kwargs)` written to `path`."""
  return _save(metric_bars_figure(runs, **kwargs), path)


def plot_score_histogram(scores: dict[str, np.ndarray], threshold: float, path: PathLike, *,
                         xlabel: str = "detector score") -> pathlib.Path:
  """Overlaid histograms of detector scores per group, with the threshold marked."""
  fig = Figure(figsize=(6.0, 3.6))
  ax = fig.add_subplot()
  values = [np.asarray(v, np.float64) for v in scores.values()]
  bins = np.histogram_bin_edges(np.concatenate(values + [np.array([threshold])]), bins=30)
  for (name, v), color in zip(scores.items(), ("tab:blue", "tab:red", "tab:green")):
    ax.hist(v, bins=bins, alpha=0.5, color=color, label=f"{name} ({len(v)})")
  ax.axvline(threshold, color="black", linestyle="--", label="threshold")
  ax.set_xlabel(xlabel)
  ax.set_ylabel("inputs")
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
  fig.tight_layout()
  return _save(fig, path)


def plot_roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: PathLike, *,
                    title: str = "", fpr_target: float | None = None) -> pathlib.Path:
  """ROC curves, one per name: {name: (false-positive rates, true-positive rates,
  AUROC)}; the chance diagonal and the target false-positive rate marked."""
  fig = Figure(figsize=(5.6, 4.2))
  ax = fig.add_subplot()
  for name, (fpr, tpr, auroc) in curves.items():
    ax.plot(fpr, tpr, label=f"{name} ({auroc:.3f})")
  ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
  if fpr_target is not None:
    ax.axvline(fpr_target, color="black", linestyle="--", linewidth=1,
               label=f"target FPR {fpr_target:g}")
  ax.set_xlabel("false-positive rate (clean inputs flagged)")
  ax.set_ylabel("true-positive rate (triggered inputs flagged)")
  ax.set_title(title)
  _legend_outside(ax)
  return _save(fig, path)
