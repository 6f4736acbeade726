"""The Colab TPU notebook runs top to bottom on CPU with its small configuration."""

import json
import pathlib
import re

import nbclient
import nbformat
import transformers

from conftest import xla_flags_with_devices
from jax_attnalign.defense import Detector, DetectorConfig

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "experiments/notebooks/colab_tpu.ipynb"


def test_notebook_executes_on_cpu(minilm_path, tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_ATTNALIGN_NOTEBOOK_SMALL", "1")
  # The kernel's mesh over 2 fake devices (8 took it to 8.3 GB, 2 to 2.9 GB).
  monkeypatch.setenv("XLA_FLAGS", xla_flags_with_devices(2))
  monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parents[2]))
  monkeypatch.setenv("JAX_ATTNALIGN_WORKDIR", str(tmp_path / "work"))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  work = tmp_path / "work"
  # The printed numbers are the stored ones, on the sets they name.
  victim = json.loads((work / "victim" / "result.json").read_text())
  assert (f"victim: CA {victim['ca']:.3f} on 200 clean test tweets, ASR {victim['asr']:.3f} "
          f"on {victim['triggered_rows']} triggered ones") in outputs
  assert "on the stream of 16 clean and 16 triggered test tweets" in outputs
  assert re.search(r"flagged \d+ of the 32 stream inputs", outputs)
  assert re.search(r"CA  \d\.\d{3} -> \d\.\d{3} on 100 held-out clean test tweets", outputs)
  assert re.search(r"ASR \d\.\d{3} -> \d\.\d{3} on 100 held-out triggered test tweets", outputs)
  detector = Detector.load(work / "detector.json")
  assert (detector.view, detector.statistic, detector.fpr) == (
      DetectorConfig().view, DetectorConfig().statistic, 0.05)
  # The export loads in transformers with its tokenizer.
  sanitised = transformers.AutoModelForSequenceClassification.from_pretrained(work / "sanitised")
  assert sanitised.config.num_labels == 2
  assert transformers.AutoTokenizer.from_pretrained(work / "sanitised")("a tweet")["input_ids"]
