"""The pictures are written as non-empty PNG files."""

import numpy as np
import pytest

from jax_attnalign import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
  data = path.read_bytes()
  assert data.startswith(PNG_MAGIC) and len(data) > 1000


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
  with pytest.raises(ValueError, match="same L"):
    plots.plot_clean_vs_triggered(clean, triggered[:, :5], tmp_path / "bad.png")


def test_metric_bars_png(tmp_path):
  from jax_attnalign.plots import plot_metric_bars
  path = plot_metric_bars({"clean": {"ca": [0.85, 0.86]},
                           "badnets": {"ca": [0.84, 0.83], "asr": [1.0, 0.99]}},
                          tmp_path / "bars.png", title="victims")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
