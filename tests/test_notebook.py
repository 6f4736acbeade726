"""The Colab TPU notebook runs top to bottom on CPU with its small configuration."""

import pathlib

import nbclient
import nbformat

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "experiments/notebooks/colab_tpu.ipynb"


def test_notebook_executes_on_cpu(minilm_path, tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_ATTNALIGN_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parents[2]))
  monkeypatch.setenv("JAX_ATTNALIGN_WORKDIR", str(tmp_path / "work"))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "victim: CA" in outputs and "ASR" in outputs and "flagged" in outputs
  assert "model.safetensors" in outputs and "config.json" in outputs
  assert (tmp_path / "work" / "detector.json").is_file()
  assert (tmp_path / "work" / "sanitised" / "model.safetensors").is_file()
