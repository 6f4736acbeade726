"""experiments.make_results renders the binaries' JSON (and only that) into tables."""

import json

import pytest

from experiments import make_results


def _write(path, obj):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj))


def test_tables_carry_the_json_numbers_and_the_paper_beside_them(tmp_path):
  results = tmp_path / "results"
  _write(results / "smollm2" / "table1.json", [
      {"victim": "classification_badnets_seed1", "reader": "victim", "view": "gen_to_prompt",
       "statistic": "percentile", "clean": 0.99123, "triggered": 0.99187, "auroc": 0.6451,
       "auroc_layer_mean": 0.155, "best_layer": 25, "best_layer_auroc": 0.96,
       "paper": [0.9149, 0.9921]}])
  run = lambda seed, asr, dataset="sst2": {"victim": f"classification_badnets_seed{seed}",
                           "task": "classification", "attack": "badnets", "seed": seed,
                           "dataset": dataset,
                           "variant": "detector", "before": {"ca": 0.86, "asr": 1.0},
                           "after": {"ca": 0.89, "asr": asr},
                           "detection": {"auroc": 0.75, "suspects": 18,
                                         "suspects_triggered": 15}}
  generation = lambda variant, seed, asr: {
      "victim": f"refusal_vpi_seed{seed}", "task": "refusal", "attack": "vpi", "seed": seed,
      "dataset": None,
      "variant": variant, "before": {"asr": 0.98, "rouge_l": 0.28},
      "after": {"asr": asr, "rouge_l": 0.27}, "detection": None, "seconds": 600.0}
  _write(results / "smollm2" / "defend_lm.json", [run(1, 0.2), run(2, 0.4)])
  _write(results / "smollm2_ag_news" / "defend_lm.json", [run(0, 0.9, "ag_news")])
  _write(results / "smollm2_gen" / "defend_lm.json", [
      generation("cleangen", 0, 0.1), generation("cleangen", 1, 0.2),
      generation("graceful", 0, 0.5),
      generation("oracle (answer_collapse stop)", 4, 0.0),  # outside the grid: not a seed
      {**generation(make_results.COLLAPSE_RECIPE, 7, 0.06),
       "after": {"asr": 0.06, "rouge_l": 0.289, "triggered_degenerate_rate": 0.2}}])
  column = lambda variant, seed, ca, asr: {
      "victim": f"badnets_seed{seed}", "dataset": "sst2", "attack": "badnets",
      "variant": variant, "seed": seed, "before": {"ca": 0.86, "asr": 1.0},
      "after": {"ca": ca, "asr": asr}, "detection": {"auroc": 0.99, "suspects": 64,
                                                      "suspects_triggered": 64}}
  _write(results / "minilm" / "table2.json", [
      column("FP", 0, 0.85, 0.3), column("ours (detector suspects)", 0, 0.84, 0.2),
      column("FP", 1, 0.85, 0.5), column("ours (detector suspects)", 1, 0.86, 0.4)])
  detected = lambda detector, seed, auroc: {
      "victim": f"hiddenkiller_seed{seed}", "dataset": "sst2", "attack": "hiddenkiller",
      "seed": seed, "detector": detector, "auroc": auroc, "tpr": 0.1, "fpr": 0.05}
  _write(results / "minilm" / "detect.json", [detected("dan", 0, 0.6), detected("dan", 1, 0.8),
                                               detected("paper", 0, 0.5), detected("paper", 1, 0.7),
                                               {**detected("dan", 2, 0.99), "development": True}])
  # dan on s1 and s2 once more, thresholds from more clean rows: that run counts, once
  _write(results / "minilm_calibration" / "detect.json", [
      {**detected("dan", 1, 0.82), "sizes": {"calibration": 1000}},
      {**detected("dan", 2, 0.98), "development": True}])
  _write(results / "smollm2_detect" / "detect.json", [
      {**detected("dan", 2, 0.9), "model": "SmolLM2", "victim": "classification_badnets_seed2",
       "attack": "badnets"}])
  _write(results / "minilm_suspects" / "defend.json", [
      column("ours (dan detector suspects)", 0, 0.87, 0.37),
      column("ours (oracle suspects)", 0, 0.85, 0.46)])
  page = make_results.results_page(results)
  assert ("| sst2 | badnets | 0.860 | 1.000 | 0.870 | **0.370** | 0.850 | 0.460 | 1 |"
          in page)  # defend.json: one column per suspect source
  assert "| sst2 | hiddenkiller | dan | 0.700 ± 0.141 | 0.100 ± 0.000 | 0.050 ± 0.000 | — | 0, 1 |" in page
  # Table 2: FP's ASR 0.400 ± 0.141, ours 0.300 ± 0.141 and bold (CA within 2 points).
  assert "| 0.850 ± 0.000 | 0.400 ± 0.141 | 0.850 ± 0.014 | **0.300 ± 0.141** |" in page
  assert "| 0.9912 | 0.9919 | 0.645 | 0.155 | 25 (0.960) | 0.9149 -> 0.9921 |" in page
  assert "0.300 ± 0.141" in page  # ASR after, mean ± std over the two seeds
  headline = make_results.headline(results)
  assert ("| Detection AUROC, sst2 hiddenkiller: the paper's score; the best of 2 detectors | — "
          "| paper 0.600 ± 0.141; dan 0.700 ± 0.141, TPR 0.100 ± 0.000 at its threshold "
          "(MiniLM, seeds 0, 1) |") in headline
  assert ("| Detection AUROC, sst2 badnets: dan alone | — | dan 0.900, TPR 0.100 at its "
          "threshold (SmolLM2, seed 2) |") in headline
  assert "0.915 -> 0.992 (Llama-2-7B) | 0.9912 -> 0.9919, AUROC 0.65" in headline
  assert "86.91 / 88.73 -> 85.19 / 25.61" in headline
  assert "30.0 ± 14.1" in headline and "seeds 1, 2" in headline
  # The SST-2 headline row reads SST-2's runs only, not the AG News victim's; the
  # chat classifiers' grid keeps each dataset in its row, the paper's Llama-2 beside.
  chat = [line for line in headline.splitlines() if "SST-2 BadNets, chat classifier" in line]
  assert len(chat) == 1 and "90.0" not in chat[0]
  # Classifier rows carry CA beside ASR, as the encoders' Table 2(a) rows do.
  assert ("| Table 2(a), chat classifiers, sst2 badnets: ASR (CA) (%) of vanilla, detector | "
          "88.7 (86.9), 25.6 (85.2) (Llama-2-7B) | 100.0 (86.0), 30.0 (89.0) "
          "(SmolLM2, seeds 1, 2) |") in headline
  assert ("| Table 2(a), chat classifiers, ag_news badnets: ASR (CA) (%) of vanilla, detector | "
          "82.3 (83.4), 28.1 (83.4) (Llama-2-7B) | 100.0 (86.0), 90.0 (89.0) (SmolLM2, seed 0) |"
          ) in headline
  assert "| Table 1, smollm2 classification_badnets_seed1: 99th pct" in headline
  # Table 2(b): the paper's Llama-2 ASR of vanilla, CleanGen and GraCeFul beside ours
  # (GraCeFul ran on one of the two victims, which its cell says).
  assert ("| Table 2(b), refusal vpi: ASR (%) of vanilla, cleangen, graceful | 97.4, 28.0, "
          "20.2 (Llama-2-7B) | 98.0, 15.0, 50.0 (seed 0) (SmolLM2, seeds 0, 1) |") in headline
  assert "| refusal | vpi | rouge_l | 0.980 ± 0.000 | 0.280 ± 0.000 | **0.150 ± 0.071** |" in page
  # The answer-collapse recipe: its own row, not a column of the grid (other seeds).
  assert ("| Ours, answer-collapse suspects and stop (victims trained after it was frozen): "
          "before -> after (%), refusal vpi | refusal vpi: ASR 97.4 -> 14.4 (Llama-2-7B) | "
          "ASR 98.0 -> 6.0, ROUGE-L 28.0 -> 28.9, degenerate 20.0 (seed 7) (SmolLM2) |"
          ) in headline
  # The README's brief headline: Table 1 in one row, detection in the matrix.
  brief = make_results.headline(results, brief=True)
  assert brief.count("| Table 1") == 1 and "0.65 (smollm2 classification_badnets_seed1)" in brief
  assert "| Table 2(a), sst2 badnets:" in brief and "| Table 2(b), refusal vpi:" in brief
  assert "Detection AUROC" not in brief
  # The matrix: a detector's mean AUROC per column, bold the column's best, "—" where
  # it did not run.
  matrix = make_results.detection_matrix(results)
  assert matrix.startswith("| detector | MiniLM sst2 hiddenkiller (s0,1) | SmolLM2 sst2 badnets "
                           "(s2) |")
  assert "| dan | **0.71** | **0.90** |" in matrix and "| paper | 0.60 | — |" in matrix
  # A development victim's run (dan's settings chosen on it) is named, never pooled:
  # not in the matrix or the headline, a line of its own in the results page.
  assert matrix.endswith("Left out, the victims a detector's settings were chosen on: dan on "
                         "MiniLM sst2 hiddenkiller s2.")
  assert "| sst2 | hiddenkiller | dan (development) | 0.990 | 0.100 | 0.050 | — | 2 |" in page
  # Table 2(a): ASR (CA) of vanilla and each column that ran, the paper's BERT beside.
  assert ("| Table 2(a), sst2 badnets: ASR (CA) (%) of vanilla, fp, detector | 99.7 (92.7), "
          "26.4 (92.3), 11.2 (91.1) (BERT) | 100.0 (86.0), 40.0 (85.0), 30.0 (85.0) "
          "(MiniLM, seeds 0, 1) |") in headline


def test_headline_block_is_replaced_in_place(tmp_path):
  results = tmp_path / "results"
  _write(results / "owner" / "audit.json", {
      "model": "m", "verdict": {"backdoored": True, "incoming": 100, "flagged": 31,
                                "holdout": 80, "holdout_flagged": 3, "expected": 3.75,
                                "p_value": 1e-9, "flagged_rate_interval": [0.22, 0.41],
                                "alpha": 0.01},
      "clean_metrics": {"before": {"accuracy": 0.8}, "after": {"accuracy": 0.82}}})
  readme = tmp_path / "README.md"
  readme.write_text("intro\n" + "\n".join(make_results.HEADLINE) + "\nmiddle\n"
                    + "\n".join(make_results.DETECTION) + "\noutro\n")
  make_results.write(results, tmp_path / "results.md", readme)
  text = readme.read_text()
  assert text.startswith("intro\n") and text.endswith("outro\n") and "\nmiddle\n" in text
  assert "| what | paper | ours |" in text
  assert "No detection benchmark has run" in text  # the second block, filled too
  readme.write_text("intro\n" + "\n".join(make_results.HEADLINE) + "\n")
  with pytest.raises(ValueError, match="no generated block <!-- detection"):
    make_results.write(results, tmp_path / "results.md", readme)
  assert readme.read_text() == "intro\n" + "\n".join(make_results.HEADLINE) + "\n"
  page = (tmp_path / "results.md").read_text()
  assert "**BACKDOOR SUSPECTED: 31 of 100" in page and "accuracy 0.800 -> 0.820" in page


def test_victims_summary_keeps_tasks_apart(tmp_path):
  from jax_attnalign.harness import reporting
  victim = lambda task, seed, asr: {"config": {"task": task, "attack": "vpi", "seed": seed},
                                    "asr": asr, "rouge_l": 0.3, "test_rows": 200,
                                    "triggered_rows": 200}
  _write(tmp_path / "refusal_vpi_seed2" / "result.json", victim("refusal", 2, 0.97))
  _write(tmp_path / "negsentiment_vpi_seed0" / "result.json", victim("negsentiment", 0, 0.99))
  table = reporting.write_victims_summary(tmp_path, "SmolLM2 victims")
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["refusal vpi"]["asr"][0] == 0.97 and summary["negsentiment vpi"]["asr"][0] == 0.99
  assert "| refusal vpi | 0.970 |" in table and table.startswith("SmolLM2 victims,")
  (tmp_path / "negsentiment_vpi_seed0" / "result.json").unlink()
  table = reporting.write_victims_summary(tmp_path, "SmolLM2 victims")
  assert table.startswith("SmolLM2 victims (refusal),") and "| vpi | 0.970 |" in table


def test_frozen_chat_test_row_gives_its_verdict_only_when_complete(tmp_path):
  """The frozen chat-classifier test reads its own victims (seeds 4-6) only, says
  'incomplete' until both columns ran on all of them, and counts the recipe
  better only at a lower mean ASR with mean CA at most 2 points below the other's."""
  row = lambda variant, seed, ca, asr: {
      "victim": f"classification_badnets_seed{seed}", "task": "classification",
      "attack": "badnets", "seed": seed, "dataset": "sst2", "variant": variant,
      "before": {"ca": 0.88, "asr": 1.0}, "after": {"ca": ca, "asr": asr}, "detection": None}
  tested = [row("fine_pruning", 1, 0.5, 0.0)]  # an earlier victim: not part of the test
  tested += [row("fine_pruning", s, 0.84, 0.3) for s in (4, 5, 6)]
  tested += [row("uniform_only", s, 0.83, 0.1) for s in (4, 5)]
  path = tmp_path / "results" / "smollm2" / "defend_lm.json"

  def frozen(rows):
    _write(path, rows)
    lines = [line for line in make_results.headline(tmp_path / "results").splitlines()
             if line.startswith("| Frozen test")]
    assert len(lines) == 1
    return lines[0]

  assert frozen(tested).endswith(
      "| — | uniform_only 83.0 ± 0.0 / 10.0 ± 0.0 (seeds 4, 5); fine_pruning 84.0 ± 0.0 / "
      "30.0 ± 0.0 (seeds 4, 5, 6) (SmolLM2); incomplete |")
  assert frozen(tested + [row("uniform_only", 6, 0.83, 0.1)]).endswith("; uniform_only better |")
  assert frozen(tested + [row("uniform_only", 6, 0.77, 0.1)]).endswith(
      "; uniform_only not better |")  # mean CA 81.0, more than 2 points below 84.0
  assert frozen(tested + [row("uniform_only", 6, 0.83, 0.7)]).endswith(
      "; uniform_only not better |")  # mean ASR 30.0, not lower
