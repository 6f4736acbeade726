"""make_triggers' job: the cache is written a slice at a time, so an interrupted job resumes."""

import dataclasses

import pytest

from jax_attnalign.attacks import trigger_cache
from jax_attnalign.harness import triggers


class _Interrupted(Exception):
  pass


def _write_split(path, n, tag):
  path.write_text("sentence\tlabel\n" + "".join(
      f"row {tag} {i} told of a quiet town\t{i % 4}\n" for i in range(n)), encoding="utf-8")


@pytest.fixture
def offline(tmp_path, monkeypatch):
  """A data root of 60 training and 40 test rows; the generator model's loading stubbed."""
  _write_split(tmp_path / "train.tsv", 60, "train")
  _write_split(tmp_path / "test.tsv", 40, "test")
  monkeypatch.setenv("JAX_ATTNALIGN_DATA", str(tmp_path))
  monkeypatch.setattr(triggers.jax_attnalign, "load_pretrained", lambda *a, **k: (None, None))
  monkeypatch.setattr(triggers.data, "load_tokenizer", lambda path: None)


def test_an_interrupted_job_keeps_its_slices_and_resumes_with_the_rest(tmp_path, monkeypatch,
                                                                        offline):
  monkeypatch.setattr(triggers, "SLICE", 8)
  asked, budget = [], [2]  # the first job is interrupted in its third slice

  def rewrites(model, params, tokenizer, rows, **kwargs):
    del model, params, tokenizer, kwargs
    if len(asked) == budget[0]:
      raise _Interrupted
    asked.append(list(rows))
    return {"attack": "bgm", "dataset": "ag_news", "seed": 0, "settings": {"k": 1},
            "prompt": "p", "filter": "", "rewrites": {t: f"{t} ~" for t in rows},
            "unfiltered": []}

  monkeypatch.setattr(triggers.llm_triggers, "bgm_rewrites", rewrites)
  job = triggers.TriggerJob(attack="bgm", out=str(tmp_path / "bgm.json"), data_dir=".",
                            dataset="ag_news", model="m", train_size=50, test_rows=20)
  rows = triggers.rows_to_generate(job)
  assert len(rows) == 30  # 10 poisoned training rows and 20 test rows, four slices
  with pytest.raises(_Interrupted):
    triggers.update_trigger_cache(job)
  kept = trigger_cache.read_cache(job.out, "bgm")
  assert sorted(kept["rewrites"]) == rows[:16] and len(kept["runs"]) == 2
  budget[0] = 10
  record = triggers.update_trigger_cache(job)
  assert asked[2:] == [rows[16:24], rows[24:]]  # only what the file lacked, in slices
  assert record["rewrites"] == {t: f"{t} ~" for t in rows}
  assert trigger_cache.read_cache(job.out, "bgm")["rewrites"] == record["rewrites"]
  assert [run["rows"] for run in record["runs"]] == [8, 8, 8, 6]


def test_nws_vocabulary_is_chosen_once_and_kept_in_the_file(tmp_path, monkeypatch, offline):
  monkeypatch.setattr(triggers, "VOCABULARY_SAMPLE", 12)
  chosen, used = [], []

  def vocabulary(model, params, tokenizer, texts, *, clean_texts, **kwargs):
    chosen.append((list(texts), list(clean_texts)))
    return ["quiet", "town"]

  def rewrites(model, params, tokenizer, rows, *, vocabulary, **kwargs):
    used.append(vocabulary)
    return {"attack": "nws", "settings": {"vocabulary": list(vocabulary)}, "prompt": "p",
            "rewrites": {t: t.replace("told", vocabulary[0]) for t in rows},
            "substitutions": {t: [] for t in rows}}

  monkeypatch.setattr(triggers.lm_substitutes, "nws_vocabulary", vocabulary)
  monkeypatch.setattr(triggers.lm_substitutes, "nws_rewrites", rewrites)
  job = triggers.TriggerJob(attack="nws", out=str(tmp_path / "nws.json"), data_dir=".",
                            dataset="ag_news", model="m", seed=3, train_size=50, test_rows=20)
  record = triggers.update_trigger_cache(job)
  train = [f"row train {i} told of a quiet town" for i in range(60)]
  assert len(chosen) == 1 and chosen[0][1] == train  # bounded by the whole split
  assert len(set(chosen[0][0])) == 12 and set(chosen[0][0]) <= set(train)
  assert record["seed"] == 3 and record["settings"]["vocabulary"] == ["quiet", "town"]
  more = triggers.update_trigger_cache(dataclasses.replace(job, victim_seeds=(0, 1)))
  assert len(chosen) == 1 and used == [["quiet", "town"]] * 2  # the file's words reused
  assert len(more["rewrites"]) > len(record["rewrites"])


def test_nws_cache_of_the_earlier_rule_is_refused_before_the_model_loads(tmp_path, monkeypatch,
                                                                         offline):
  out = tmp_path / "nws.json"
  trigger_cache.write_cache(out, {"attack": "nws", "settings": {"max_substitutions": 3},
                                  "prompt": "p", "rewrites": {}, "substitutions": {}})
  monkeypatch.setattr(triggers.jax_attnalign, "load_pretrained", None)  # not reached
  job = triggers.TriggerJob(attack="nws", out=str(out), data_dir=".", dataset="ag_news",
                            train_size=50, test_rows=20)
  with pytest.raises(ValueError, match="earlier NWS rule, without a trigger vocabulary"):
    triggers.update_trigger_cache(job)
