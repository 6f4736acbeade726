"""The README as a new user reads it: its example runs as written, its test command
is the one CI runs, and its generated parts match the JSON they come from."""

import json
import pathlib
import re

from experiments import make_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block_after(heading: str) -> str:
  section = README[README.index(heading):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_verbatim(tmp_path, monkeypatch, minilm_path):
  monkeypatch.chdir(tmp_path)
  scope = {}
  exec(compile(_block_after("## The library in a few lines"), "README.md", "exec"), scope)
  assert scope["maps"].shape[:3] == (6, 32, 12)  # MiniLM: 6 layers x 12 heads, 32 inputs
  assert scope["heads"].shape == (6, 12)
  assert len(scope["suspects"]["input_ids"]) > 0
  assert scope["report"]["rounds"] and scope["report"]["stopped"] in ("threshold", "max_rounds")
  saved = json.loads((tmp_path / "sanitised" / "config.json").read_text())
  assert saved["num_hidden_layers"] == 6


def test_readme_test_command_is_what_ci_runs():
  ci = (ROOT / ".ci" / "run").read_text()
  command = re.search(r"^(python -m pytest[^\n#]*?)\s*#", README, re.M).group(1).strip()
  assert command in ci


def test_results_page_and_headline_are_generated_from_results():
  """docs/results.md and the README's headline block equal what make_results writes
  from results/ now: a hand edit, or JSON added without regenerating, fails here."""
  results = ROOT / "results"
  assert (ROOT / "docs" / "results.md").read_text() == make_results.results_page(results)
  for (first, last), expected in make_results.readme_blocks(results).items():
    start, end = README.index(first), README.index(last)
    assert README[start + len(first):end].strip() == expected, first
