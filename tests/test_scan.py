"""The main job on the bundled MiniLM, against transformers' own attention maps."""

import json
import sys

import numpy as np
import torch
import transformers

from experiments import scan


def _last_layer_cls_statistics(path, sentences, max_length):
  """Per sentence, from transformers' eager attentions: the 99th percentile and the
  share above 0.99 of the pairwise cosines of the last layer's heads' [CLS] rows
  over the non-special, non-padding columns."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  enc = tokenizer(sentences, padding="max_length", max_length=max_length, truncation=True,
                  return_special_tokens_mask=True, return_tensors="pt")
  keep = (enc.pop("special_tokens_mask") == 0) & (enc["attention_mask"] == 1)
  hf = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
  with torch.no_grad():
    cls_rows = hf(**enc, output_attentions=True).attentions[-1][:, :, 0, :].numpy()
  out = []
  for rows, columns in zip(cls_rows, keep.numpy()):
    unit = rows[:, columns] / np.linalg.norm(rows[:, columns], axis=1, keepdims=True)
    pairs = (unit @ unit.T)[np.triu_indices(len(unit), 1)]
    out.append((np.percentile(pairs, 99), np.mean(pairs > 0.99)))
  return np.array(out)


def test_scan_last_layer_matches_transformers(minilm_path, tmp_path, monkeypatch):
  monkeypatch.setattr(sys, "argv", ["scan", f"--model={minilm_path}", "--limit=4",
                                    f"--workdir={tmp_path}", "--view=cls_row_last_layer"])
  scan.FLAGS.unparse_flags()
  scan.FLAGS(sys.argv)
  scan.main([])
  result = json.loads((tmp_path / "scan.json").read_text())
  assert result["sentences"] == 4 and result["view"] == "cls_row_last_layer"
  assert result["layers"] == [5]  # MiniLM's last layer is its sixth
  expected = _last_layer_cls_statistics(minilm_path, scan.EMBEDDED[:4], scan.FLAGS.max_length)
  np.testing.assert_allclose(np.asarray(result["percentile_99"])[:, 0], expected[:, 0],
                             atol=1e-4)
  np.testing.assert_allclose(np.asarray(result["frac_above_0_99"])[:, 0], expected[:, 1])
  table = (tmp_path / "scan.md").read_text()
  assert "on 4 sentences of the embedded examples" in table
  (row,) = [line for line in table.splitlines() if line.startswith("| 5 |")]
  printed = [float(x) for cell in row.strip("|").split("|")[1:] for x in cell.split("±")]
  np.testing.assert_allclose(printed, [expected[:, 1].mean(), expected[:, 1].std(),
                                       expected[:, 0].mean(), expected[:, 0].std()],
                             atol=1.5e-3)
  print("per sentence (99th percentile, share > 0.99):", expected.tolist())
