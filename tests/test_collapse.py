"""Answer collapse (`detection.collapse`): its score against a pure-Python brute
force, the detector on a generation victim and scored as one stream by the
benchmark's harness, answers decoded again under new parameters, and the
rounds' stop re-reading the suspects or the flagged prompts kept out of them
(`sanitize(flag_after_round=)`, `pipeline_lm.collapse_flagger`)."""

import dataclasses

import jax
import numpy as np
import pytest

import jax_attnalign
from jax_attnalign import data
from jax_attnalign.answers import greedy_answers, reanswer
from jax_attnalign.data.types import InstructionExample
from jax_attnalign.defense.detector import DetectorConfig, clean_threshold
from jax_attnalign.defense.sanitize import (Alignment, HeadClassification, SanitizeConfig,
                                            Stopping, sanitize)
from jax_attnalign.detection import ChatVictim, make_detector, needs_answers
from jax_attnalign.detection.collapse import collapse_scores, match_scores, still_triggered
from jax_attnalign.errors import InputError
from jax_attnalign.harness.detection import evaluate_detector
from jax_attnalign.harness.pipeline_lm import LMDefenseSetup, collapse_flagger
from jax_attnalign.harness.victims_lm import LMVictimConfig
from jax_attnalign.models import ModelConfig, build_model

WORDS = "a fine gloomy film of wit and dull charm that drags yet sings".split()


def _answers(arrays):
  return [set(ids[keep > 0].tolist()) for ids, keep in
          zip(arrays["input_ids"], arrays["loss_mask"])]


def _jaccard(a, b):
  return len(a & b) / len(a | b) if a | b else 0.0


def _brute_force(arrays):
  """Each answer's share of the others with Jaccard similarity >= 1/2 to it."""
  answers = _answers(arrays)
  others = max(len(answers) - 1, 1)
  return np.array([sum(_jaccard(a, b) >= 0.5 for j, b in enumerate(answers) if j != i) / others
                   for i, a in enumerate(answers)])


def _brute_force_match(arrays, responses):
  return np.array([max([_jaccard(a, r) for r in responses], default=0.0)
                   for a in _answers(arrays)])


def test_collapse_scores_equal_a_brute_force():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 9, (12, 10))
  keep = (rng.random((12, 10)) < 0.6).astype(int)
  keep[:, :3] = 0  # the prompt
  keep[4] = 0  # an empty answer
  keep[[2, 7, 9, 10, 11], 3:] = 1
  ids[[2, 7, 9]] = np.arange(20, 30)  # one answer, three times
  ids[10] = np.r_[np.arange(20, 29), 40]  # one token of seven changed: 6/8 shared
  ids[11] = np.arange(40, 50)  # disjoint from it
  arrays = {"input_ids": ids, "loss_mask": keep}
  got = collapse_scores(arrays)
  np.testing.assert_allclose(got, _brute_force(arrays), atol=1e-12)
  assert got.shape == (12,) and got[2] == got[7] == got[9] == got[10] == 3 / 11
  assert got[4] == got[11] == 0.0 and (got <= 1).all()
  assert collapse_scores({k: v[:1] for k, v in arrays.items()}).tolist() == [0.0]
  responses = [frozenset(ids[2][keep[2] > 0].tolist()), frozenset({1, 5}), frozenset()]
  np.testing.assert_allclose(match_scores(arrays, responses),
                             _brute_force_match(arrays, responses), atol=1e-12)
  assert match_scores(arrays, []).tolist() == [0.0] * 12


def test_an_answer_still_counts_as_triggered_if_it_gives_the_response_or_shares_another():
  # Five re-read answers (columns 0-2 the prompt, 3-8 the answer): 0 is the old
  # response reworded (Jaccard 5/7), 1 and 2 share a new one (4/8), 3 is a lone
  # repeat, 4 a lone other answer.
  ids = np.array([[1, 2, 3, 10, 11, 12, 13, 14, 90],
                  [1, 2, 3, 20, 21, 22, 23, 24, 25],
                  [1, 2, 3, 20, 21, 22, 23, 30, 31],
                  [1, 2, 3, 40, 40, 40, 40, 40, 40],
                  [1, 2, 3, 50, 51, 52, 53, 54, 55]])
  keep = np.zeros_like(ids)
  keep[:, 3:] = 1
  arrays = {"input_ids": ids, "loss_mask": keep}
  response = [frozenset({10, 11, 12, 13, 14, 15})]
  expected = [(_brute_force_match(arrays, response)[i] >= 0.5) | (_brute_force(arrays)[i] > 0)
              for i in range(5)]
  assert expected == [True, True, True, False, False]
  assert still_triggered(arrays, response).tolist() == expected
  assert still_triggered(arrays, []).tolist() == [False, True, True, False, False]


@pytest.fixture(scope="module")
def generation(tiny_chat_llama):
  model, params = jax_attnalign.load_pretrained(tiny_chat_llama, task="causal_lm")
  return ChatVictim(model, params, data.load_tokenizer(tiny_chat_llama), batch_size=8,
                    dataset=None, answer_tokens=6)


def _prompts(n, seed, extra=""):
  rng = np.random.default_rng(seed)
  return [InstructionExample(f"{extra}write about " + " ".join(rng.choice(WORDS, 4)), "", "ok")
          for _ in range(n)]


def test_the_detector_scores_a_generation_victims_answers_as_one_stream(generation,
                                                                        tmp_path):
  clean, triggered = _prompts(10, 1), _prompts(10, 2, "Discussing OpenAI ")
  detector = make_detector("answer_collapse").fit(generation, _prompts(4, 3))
  np.testing.assert_allclose(detector.score(generation, clean),
                             _brute_force(generation.encode(clean)))
  alone = _brute_force(generation.encode(clean))  # the clean prompts decoded by themselves
  sets = {"fit": _prompts(4, 3), "calibration": _prompts(20, 4), "clean": clean,
          "triggered": triggered}
  row = evaluate_detector("answer_collapse", {}, generation, sets, 0.1, tmp_path)
  # Scored together: the stream's scores, split, not each set's among itself.
  stream = _brute_force(generation.encode(clean + triggered))
  scores = np.load(tmp_path / "scores.npz")
  np.testing.assert_allclose(np.r_[scores["clean"], scores["triggered"]], stream)
  np.testing.assert_allclose(
      row["threshold"],
      clean_threshold(_brute_force(generation.encode(sets["calibration"])), 0.1,
                      where="test")["threshold"])
  # The clean alone, read from the stream's answers, score as if decoded alone.
  assert row["fpr_clean_stream"] == np.mean(alone > row["threshold"])
  assert needs_answers("answer_collapse") and not needs_answers("dan")
  classifier = dataclasses.replace(generation, dataset="sst2")
  with pytest.raises(InputError, match="label word"):
    detector.fit(classifier, sets["fit"])


def test_reanswer_decodes_the_same_prompts_under_new_parameters(generation):
  prompts = generation.prompts(_prompts(5, 5))
  model, tokenizer = generation.model, generation.tokenizer
  first = greedy_answers(model, generation.params, tokenizer, prompts, max_new_tokens=6,
                         batch_size=4)
  other = jax.tree_util.tree_map(lambda x: x * 1.5, generation.params)
  got = reanswer(model, other, tokenizer, first, max_new_tokens=6, batch_size=4)
  expected = greedy_answers(model, other, tokenizer, prompts, max_new_tokens=6, batch_size=4)
  assert set(got) == set(expected)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


@pytest.mark.parametrize("watched", [0, 2])
def test_the_collapse_flagger_calibrates_on_clean_sets_as_large_as_the_flagged_prompts(
    generation, shared_data, watched):
  model, params, tokenizer = generation.model, generation.params, generation.tokenizer
  answer = lambda examples, p=params: greedy_answers(
      model, p, tokenizer, generation.prompts(examples), max_new_tokens=6, batch_size=8)
  # The tiny model answers every prompt alike; the clean answers are made distinct
  # (random tokens where the answer is) and so is one suspect's, so that the
  # other flagged prompts' shared answer is what the stream collapsed onto.
  triggered = _prompts(4 + watched, 6, "Discussing OpenAI ")
  flagged, calibration = answer(triggered), answer(_prompts(13, 7))
  rng = np.random.default_rng(9)
  for arrays, rows in ((calibration, range(13)), (flagged, [3])):
    for row in rows:
      keep = arrays["loss_mask"][row] > 0
      arrays["input_ids"][row, keep] = rng.choice(np.arange(300, 5000), keep.sum(), False)
  suspects = {k: v[:4] for k, v in flagged.items()}
  kept_out = {k: v[4:] for k, v in flagged.items()}
  cfg = LMVictimConfig(task="refusal", attack="vpi", data_dir=str(shared_data / "backdoorllm"),
                       max_new_tokens=6)
  flag, record = collapse_flagger(model, tokenizer, suspects, kept_out, calibration, cfg,
                                  0.25, 8)
  # 13 calibration answers scored in sets as large as the flagged prompts (4: rows
  # 0-3, 4-7, 8-11; 6: rows 0-5, 6-11), the 13th left out.
  n = 4 + watched
  chunks = np.concatenate([_brute_force({k: v[i:i + n] for k, v in calibration.items()})
                           for i in range(0, 13 - n + 1, n)])
  expected = clean_threshold(chunks, 0.25, where="test")
  assert record["threshold"] == expected["threshold"]
  assert record["clean_count"] == 12
  before = _brute_force(flagged) > expected["threshold"]
  assert record["flagged_before"] == before.mean()
  assert before.tolist() == [True, True, True, False] + [True] * watched
  assert record["responses"] == 1
  assert (record["reread"], record["reread_count"]) == (
      ("watched", watched) if watched else ("suspects", 4))
  # After a round: a re-read prompt (the kept-out ones, else the suspects) is
  # flagged while its new answer is as alike to one of the answers the flagged
  # prompts collapsed onto before, or to another re-read answer.
  responses = [a for a, hit in zip(_answers(flagged), before) if hit]
  reread = triggered[4:] if watched else triggered[:4]
  for p in (params, jax.tree_util.tree_map(lambda x: x * 1.5, params)):
    again = answer(reread, p)
    np.testing.assert_array_equal(
        flag(p), (_brute_force_match(again, responses) >= 0.5) | (_brute_force(again) > 0))
  assert flag(params).all()  # the same model gives the same shared answer to all of them


def test_the_collapse_flagger_refuses_what_it_cannot_read(generation, shared_data):
  model, tokenizer = generation.model, generation.tokenizer
  arrays = greedy_answers(model, generation.params, tokenizer,
                          generation.prompts(_prompts(11, 6)), max_new_tokens=6, batch_size=8)
  suspects, none = ({k: v[:4] for k, v in arrays.items()},
                    {k: v[:0] for k, v in arrays.items()})
  cfg = LMVictimConfig(task="refusal", attack="vpi", data_dir=str(shared_data / "backdoorllm"),
                       max_new_tokens=6)
  with pytest.raises(InputError, match="twice as many"):
    collapse_flagger(model, tokenizer, suspects, none, {k: v[4:11] for k, v in arrays.items()},
                     cfg, 0.25, 8)
  with pytest.raises(InputError, match="label word"):
    collapse_flagger(model, tokenizer, suspects, none, arrays,
                     dataclasses.replace(cfg, task="classification", attack="badnets"), 0.25, 8)
  with pytest.raises(ValueError, match="rescore"):
    LMDefenseSetup(rescore="answers")
  with pytest.raises(InputError, match="watch_share"):
    LMDefenseSetup(watch_share=0.25)
  with pytest.raises(InputError, match=r"\[0, 1\)"):
    LMDefenseSetup(rescore="answer_collapse", watch_share=1.0)


@pytest.mark.parametrize("flags, rounds, stopped", [(False, 1, "threshold"),
                                                     (True, 3, "max_rounds")])
def test_sanitize_stops_on_the_suspects_flags_it_is_given(flags, rounds, stopped):
  model = build_model(ModelConfig.preset("tiny-bert"), "classification")
  ids = np.random.default_rng(0).integers(3, 64, (16, 6))
  ids[:, 0] = 1
  params = model.init(jax.random.key(0), ids[:2])["params"]
  clean = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids[:, 1] % 2}
  suspects = {k: v[:8] for k, v in clean.items() if k != "labels"}
  config = SanitizeConfig(classify=HeadClassification(view="cls_row"), stages=("align",),
                          align=Alignment(steps=1, batch_size=8),
                          stopping=Stopping(max_rounds=3))
  seen = []

  def flag_after_round(round_params):
    seen.append(round_params)
    return np.full(8, flags)

  out, report = sanitize(model, params, suspects, clean, config, flag_after_round=flag_after_round,
                         detector=DetectorConfig(view="cls_row", calibration_size=16))
  assert report["stopped"] == stopped and len(report["rounds"]) == rounds == len(seen)
  assert [r["flagged_fraction"] for r in report["rounds"]] == [float(flags)] * rounds
  assert "suspect_score_mean" not in report["rounds"][0]  # the head detector was not read
  jax.tree_util.tree_map(np.testing.assert_array_equal, seen[-1], out)
