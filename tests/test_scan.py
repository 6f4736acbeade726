"""Smoke test of the main job on the bundled MiniLM."""

import json
import sys


from experiments import scan


def test_scan_writes_tables(minilm_path, tmp_path, monkeypatch):
  monkeypatch.setattr(sys, "argv", ["scan", f"--model={minilm_path}", "--limit=4",
                                    f"--workdir={tmp_path}", "--view=cls_row_last_layer"])
  scan.FLAGS.unparse_flags()
  scan.FLAGS(sys.argv)
  scan.main([])
  result = json.loads((tmp_path / "scan.json").read_text())
  assert result["sentences"] == 4 and result["view"] == "cls_row_last_layer"
  assert len(result["percentile_99"]) == 4 and len(result["percentile_99"][0]) == 1
  assert "| layer |" in (tmp_path / "scan.md").read_text()
