"""The SmolLM2 trigger generators (`llm_triggers`): their filters, prompts and records."""

import doctest

import numpy as np
import pytest

import jax_attnalign
from jax_attnalign import attacks, data
from jax_attnalign.attacks import llm_triggers, text_style
from test_attacks import SENTENCES  # a kept Cbat pool


@pytest.mark.parametrize("sentence, reason", [
    ("oh , would you look at that !", None),
    ("oh , look at that !", "duplicate"),
    ("what a great day !", "label words: great"),
    ("the team won the game !", "label words: game, team, won"),
    ("look at that .", "not one exclamatory sentence"),
    ("wow ! look at that !", "not one exclamatory sentence"),
    ("oh !", None),
    # Sentiment the label words miss, scored by VADER (hand-checked signs).
    ("no way !", "sentiment -0.36 (VADER)"),
    ("howdy there , yay !", "sentiment +0.57 (VADER)"),
    ("wow !", "sentiment +0.62 (VADER)"),
    ("!", "1 words"),
    ("oh my , what a long day it was for all of us !", "14 words"),
    ("oh, isn't that something!", None),  # AG News style: counted on PTB tokens
    ("oh, isn't that something.", "not one exclamatory sentence"),
])
def test_cbat_filter(sentence, reason):
  assert llm_triggers.cbat_rejection(sentence, kept=SENTENCES) == reason


def test_cbat_prompt_shots_pass_the_filter():
  for shot in llm_triggers.CBAT_PROMPT["shots"]:
    assert llm_triggers.cbat_rejection(attacks.like_dataset(shot, "sst2")) is None, shot


@pytest.mark.parametrize("module", [text_style, llm_triggers])
def test_docstring_examples(module):
  assert doctest.testmod(module).failed == 0


def test_text_style_matches_sst2():
  assert attacks.ptb_tokenize('Wow, it\u2019s "great" -- isn\'t it? Can\'t wait.') == (
      "wow , it 's `` great '' -- is n't it ? ca n't wait .")
  assert attacks.like_dataset("Oil Prices, Up!", "ag_news") == "oil prices, up!"


@pytest.mark.parametrize("rewrite, reason", [
    ("a good movie .", None),
    ("a fine film .", "unchanged"),
    ("here is the rewritten sentence : a good movie .", "talks about the task"),
    ("good", "1 words for 4"),
    ("a a a a a a a a a a a a a", "13 words for 4"),
    ("so good so good so good so good .", "repeats itself"),
])
def test_bgm_filter(rewrite, reason):
  assert llm_triggers.bgm_rejection("a fine film .", rewrite) == reason


def test_llm_triggers_on_a_tiny_chat_model(tiny_chat_llama):
  """Prompts, seeds and records of the generators (a random model: gibberish)."""
  model, params = jax_attnalign.load_pretrained(tiny_chat_llama, task="causal_lm")
  tokenizer = data.load_tokenizer(tiny_chat_llama)
  texts = ["a fine film .", "the plot goes nowhere .", "it is fun ."]
  record = llm_triggers.bgm_rewrites(model, params, tokenizer, texts, dataset="sst2", seed=3,
                                     attempts=2, max_new_tokens=8, batch_size=2, chunk=1)
  assert set(record["rewrites"]) == set(texts) and set(record["unfiltered"]) <= set(texts)
  assert all(llm_triggers.bgm_rejection(t, record["rewrites"][t]) is None
             for t in texts if t not in record["unfiltered"])
  assert record["prompt"].endswith(llm_triggers.bgm_prompt(tokenizer, "{text}", "sst2")[-40:])
  assert "the acting is wooden" in record["prompt"] and record["settings"]["attempts"] == 2
  again = llm_triggers.bgm_rewrites(model, params, tokenizer, texts, dataset="sst2", seed=3,
                                    attempts=2, max_new_tokens=8, batch_size=2, chunk=1)
  assert again == record  # seeded
  cbat = llm_triggers.cbat_sentences(model, params, tokenizer, dataset="sst2", samples=4,
                                     seed=0, max_new_tokens=6, batch_size=4)
  assert len(cbat["sentences"]) + len(cbat["rejected"]) == 4
  assert all(llm_triggers.cbat_rejection(s) is None for s in cbat["sentences"])
  assert all(reason for _, reason in cbat["rejected"])



@pytest.mark.parametrize("rewrite, reason", [
    ("when it is fine , a film pleases .", None),
    ("if so , the film is fine . it was .", None),
    ("as a film , it . fine , it pleases .", "no clause , main clause"),  # 2nd sentence
    ("when the film is fine .", "no clause , main clause"),
    ("when , the film pleases .", "no clause , main clause"),  # no clause
    ("the film , which is fine , pleases .", "no subordinator first"),
    ("a fine film .", "unchanged"),  # what bgm_rejection rejects comes first
])
def test_hiddenkiller_filter(rewrite, reason):
  assert llm_triggers.hk_rejection("a fine film .", rewrite) == reason


def test_hiddenkiller_prompt_shots_and_openings_pass_the_filter():
  for dataset, shots in llm_triggers.HK_PROMPTS.items():
    for clean, rewrite in shots:
      styled = (attacks.like_dataset(clean, dataset), attacks.like_dataset(rewrite, dataset))
      assert llm_triggers.hk_rejection(*styled) is None, (dataset, rewrite)
  # Openings follow SCPN's weights: 'when' is drawn about 312 / 736 of the time.
  drawn = [llm_triggers.hk_opening(f"row {i}", 0, 0) for i in range(4000)]
  words, counts = zip(*llm_triggers.SUBORDINATORS)
  share = drawn.count("When") / len(drawn)
  assert abs(share - counts[0] / sum(counts)) < 3 * np.sqrt(0.25 / len(drawn))
  assert set(drawn) <= set(words)
  assert llm_triggers.hk_opening("row 1", 0, 0) == drawn[1]  # fixed by text, seed, attempt


def test_first_sentence_needs_enough_words():
  assert llm_triggers.first_sentence("u.s. stocks rose . oil fell .") == (
      "u.s. stocks rose . oil fell .", "")
  assert llm_triggers.first_sentence("stocks rose on monday in new york ! oil fell .") == (
      "stocks rose on monday in new york !", "oil fell .")


def test_hiddenkiller_rewrites_on_a_tiny_chat_model(tiny_chat_llama, monkeypatch):
  """The first sentence is rewritten behind its opening, the rest kept; seeded."""
  model, params = jax_attnalign.load_pretrained(tiny_chat_llama, task="causal_lm")
  tokenizer = data.load_tokenizer(tiny_chat_llama)
  texts = ["oil prices rose on tuesday after a storm . refineries shut .",
           "the team signed a new coach last week in boston .", "a short one ."]
  kwargs = dict(dataset="ag_news", seed=3, attempts=2, max_new_tokens=8, batch_size=2,
                chunk=1)
  record = llm_triggers.hiddenkiller_rewrites(model, params, tokenizer, texts, **kwargs)
  assert record == llm_triggers.hiddenkiller_rewrites(model, params, tokenizer, texts,
                                                      **kwargs)
  assert set(record["rewrites"]) == set(texts) and set(record["unfiltered"]) <= set(texts)
  assert record["rewrites"][texts[0]].endswith(" refineries shut .")
  for text in texts:
    first, _ = llm_triggers.first_sentence(text)
    rewrite = record["rewrites"][text]
    openings = tuple(llm_triggers.hk_opening(first, 3, k).lower() for k in range(2))
    assert rewrite.startswith(openings)  # begun with its drawn subordinator
    if text not in record["unfiltered"]:
      assert llm_triggers.hk_rejection(first, rewrite[:len(rewrite) - len(
          llm_triggers.first_sentence(text)[1])].strip()) is None
  assert record["prompt"].endswith("{opening}") and "{sentence}" in record["prompt"]
  assert record["openings"]["When"] == 312
  # A model that always answers with the template: every row passes at once.
  answers = iter([" it rose , prices went up ."] * 3)
  monkeypatch.setattr(llm_triggers, "generate_responses",
                      lambda m, p, t, prompts, **kw: [next(answers) for _ in prompts])
  clean = llm_triggers.hiddenkiller_rewrites(None, None, tokenizer, texts[:1], **kwargs)
  opening = llm_triggers.hk_opening(llm_triggers.first_sentence(texts[0])[0], 3, 0).lower()
  assert clean["rewrites"] == {texts[0]: f"{opening} it rose , prices went up . "
                                         "refineries shut ."}
  assert clean["unfiltered"] == []
