"""The pictures: PNG files, with the values, axis labels and legends they claim."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer

from jax_attnalign import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
  data = path.read_bytes()
  assert data.startswith(PNG_MAGIC) and len(data) > 1000


def assert_legend_clear_of_data(fig):
  """The legend's box, as drawn, does not overlap the axes' (the data's) box."""
  renderer = FigureCanvasAgg(fig).get_renderer()
  fig.draw(renderer)
  ax = fig.axes[0]
  legend, frame = ax.get_legend(), ax.get_window_extent(renderer)
  assert legend is not None and not legend.get_window_extent(renderer).overlaps(frame)


def test_similarity_heatmap(tmp_path):
  rng = np.random.RandomState(0)
  vectors = rng.rand(2 * 5, 13)
  unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  path = plots.plot_similarity_heatmap(unit @ unit.T, tmp_path / "sub" / "heat.png",
                                       heads_per_layer=5, title="model-wide")
  assert path == tmp_path / "sub" / "heat.png"
  assert_png(path)
  with pytest.raises(ValueError, match="square"):
    plots.plot_similarity_heatmap(np.zeros((2, 3, 3)), tmp_path / "bad.png")


def test_clean_vs_triggered(tmp_path):
  rng = np.random.RandomState(1)
  clean, triggered = rng.rand(17, 6) * 0.1, 0.3 + rng.rand(11, 6) * 0.5  # [B, L]
  path = plots.plot_clean_vs_triggered(clean, triggered, tmp_path / "figure1.png")
  assert_png(path)
  fig = plots.clean_vs_triggered_figure(clean, triggered, ylabel="share")
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == list("012345")
  assert (ax.get_xlabel(), ax.get_ylabel()) == ("layer", "share")
  means = {line.get_label(): line.get_ydata() for line in ax.get_lines()
           if not line.get_label().startswith("_")}
  np.testing.assert_allclose(means["clean (mean of 17 inputs)"], clean.mean(0))
  np.testing.assert_allclose(means["triggered (mean of 11 inputs)"], triggered.mean(0))
  assert_legend_clear_of_data(fig)
  with pytest.raises(ValueError, match="same L"):
    plots.plot_clean_vs_triggered(clean, triggered[:, :5], tmp_path / "bad.png")


def test_clean_vs_triggered_names_the_real_layers():
  """A view of the last layer of a 6-layer model is layer 5, not layer 0."""
  rng = np.random.RandomState(2)
  fig = plots.clean_vs_triggered_figure(rng.rand(5, 1), rng.rand(4, 1), layers=range(5, 6))
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["5"]
  with pytest.raises(ValueError, match="2 layer indices for 1"):
    plots.clean_vs_triggered_figure(rng.rand(5, 1), rng.rand(4, 1), layers=[4, 5])


def test_metric_bars_heights_and_error_bars_only_over_several_values(tmp_path):
  runs = {"clean": {"ca": [0.85, 0.86]}, "badnets": {"ca": [0.84, 0.80], "asr": [1.0]}}
  assert_png(plots.plot_metric_bars(runs, tmp_path / "bars.png", title="victims"))
  fig = plots.metric_bars_figure(runs, title="victims", ylabel="share of test inputs")
  ax = fig.axes[0]
  heights = {c.get_label(): [round(b.get_height(), 6) for b in c]
             for c in ax.containers if not isinstance(c, ErrorbarContainer)}
  assert heights["ca"] == [0.855, 0.82]
  assert heights["asr"][1] == 1.0 and np.isnan(heights["asr"][0])  # no asr for clean
  errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
  # One error bar per setting with two CA values; none on the single ASR value.
  assert len(errorbars) == 1
  (segments,) = [lines.get_segments() for lines in errorbars[0].lines[2]]
  half_lengths = sorted(round((top[1] - bottom[1]) / 2, 6) for bottom, top in segments)
  assert half_lengths == sorted(round(np.std(v, ddof=1), 6) for v in ([0.85, 0.86],
                                                                      [0.84, 0.80]))
  assert ax.get_ylabel() == "share of test inputs" and ax.get_title() == "victims"
  assert [t.get_text() for t in ax.get_xticklabels()] == ["clean", "badnets"]
  assert_legend_clear_of_data(fig)


def test_metric_bars_wrap_long_setting_names_on_word_boundaries():
  runs = {"hiddenkiller\nours (crowding detector suspects, target_class stop)": {"asr": [0.4]}}
  (label,) = [t.get_text() for t in plots.metric_bars_figure(runs).axes[0].get_xticklabels()]
  assert label.split("\n")[0] == "hiddenkiller"
  assert max(len(line) for line in label.split("\n")) <= 15
  assert label.replace("\n", " ") == "hiddenkiller ours (crowding detector suspects, target_class stop)"
