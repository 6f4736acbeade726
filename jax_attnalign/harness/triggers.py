"""Trigger caches for the victims: SmolLM2 writes what Cbat, BGMAttack, NWS and
HiddenKillerLM need.

  update_trigger_cache(TriggerJob(attack="bgm", data_dir="sst2/clean", dataset="sst2",
                                  out="triggers/sst2/bgm.json", victim_seeds=(0, 1, 2)))
  VictimConfig(attack="bgm", attack_kwargs=cache_kwargs("bgm", "triggers/sst2"))

Cbat gets a pool of sentences; NWS first a trigger vocabulary (kept in the
file's settings, so added rows use the same words). The others get the rows the victims of
`victims.VictimConfig` will trigger: for each victim seed, the rows `poison`
chooses in that seed's training subset (train_size, poison_rate), and the
triggered test rows (`CachedRewritePoisoner.test_rows`, at most test_rows
non-target rows of the test split). Rows already in an existing cache are kept
and not generated again, so an interrupted job resumes; each slice of rows
generated is appended to the file's `runs` (its settings, rows and seconds).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from typing import Any

from absl import logging
import numpy as np

import jax_attnalign
from jax_attnalign import attacks, data
from jax_attnalign.assets import bundled_smollm2_path
from jax_attnalign.attacks import lm_substitutes, llm_triggers, trigger_cache
from jax_attnalign.harness.victims import seeded_subset


@dataclasses.dataclass(frozen=True)
class TriggerJob:
  """What make_triggers generates; see the module doc."""
  attack: str  # cbat, bgm, hiddenkiller_lm or nws
  out: str  # the cache file
  data_dir: str = "sst2/clean"  # {train,test}.tsv; relative: under the data root
  dataset: str = "sst2"
  model: str = ""  # a causal LM checkpoint or GGUF; "" = the bundled SmolLM2
  seed: int = 0  # the generation seed
  samples: int = 256  # Cbat: sentences sampled before the filter
  target: int = 1
  train_size: int = 3000
  poison_rate: float = 0.2
  victim_seeds: tuple[int, ...] = (0,)
  test_rows: int = 600  # 0: every non-target test row
  batch_size: int = 32


# Rows of the rewrite attacks generated between two writes of the cache file.
SLICE = 256

# NWS: training texts the LM proposes its trigger vocabulary in.
VOCABULARY_SAMPLE = 512

# The make_attack kwarg that takes each attack's cache.
CACHE_KWARGS = {"cbat": "sentences_path", "bgm": "rewrites_path", "nws": "substitutes_path",
                "hiddenkiller_lm": "rewrites_path"}


def cache_kwargs(attack: str, triggers_dir: str) -> tuple[tuple[str, str], ...]:
  """An attack's make_attack kwarg for its cache `{triggers_dir}/{attack}.json`
  (the file names make_triggers is run with); () for attacks without one."""
  if attack not in CACHE_KWARGS or not triggers_dir:
    return ()
  return ((CACHE_KWARGS[attack], str(pathlib.Path(triggers_dir) / f"{attack}.json")),)


def rows_to_generate(job: TriggerJob) -> list[str]:
  """The clean texts the victims of `job` will trigger (BGMAttack, NWS), sorted."""
  root = data.resolve_data_path(job.data_dir, missing_ok=True)
  train = data.load_classification(root, "train", dataset=job.dataset)
  test = data.load_classification(root, "test", dataset=job.dataset)
  texts = set()
  for seed in job.victim_seeds:
    attack = attacks.make_attack(job.attack, **{CACHE_KWARGS[job.attack]: job.out},
                                 max_test_rows=job.test_rows, target=job.target,
                                 poison_rate=job.poison_rate, seed=seed)
    subset, _ = seeded_subset(train, job.train_size, seed)
    texts.update(subset[i].text for i in attack.chosen_rows(subset))
    texts.update(test[i].text for i in attack.test_rows(test))
  return sorted(texts)


def update_trigger_cache(job: TriggerJob) -> dict[str, Any]:
  """Generates what `job` asks for that `job.out` lacks, writes the cache, returns it.
  BGMAttack's and NWS's rows are generated SLICE at a time and the file written
  after each, so an interrupted job resumes where it stopped (a resumed slice
  starts its samples' seeds afresh: the file differs from an uninterrupted run's
  in which sample a row got, never in which rows it holds or how they were made)."""
  out = pathlib.Path(job.out)
  record = trigger_cache.read_cache(out, job.attack) if out.is_file() else None
  todo = [] if job.attack == "cbat" else rows_to_generate(job)
  if record is not None:
    todo = [t for t in todo if t not in record["rewrites"]]
    if job.attack == "cbat" or not todo:
      logging.info("%s: %s already has every row asked for", job.attack, out)
      return record
    if job.attack == "nws" and "vocabulary" not in record["settings"]:
      raise ValueError(f"{out} was made by an earlier NWS rule, without a trigger "
                       "vocabulary; write a new file")
  model_path = job.model or str(bundled_smollm2_path())
  model, params = jax_attnalign.load_pretrained(model_path, task="causal_lm")
  tokenizer = data.load_tokenizer(model_path)
  logging.info("%s: generating %s with %s", job.attack,
               f"{job.samples} sentences" if job.attack == "cbat" else f"for {len(todo)} rows",
               model_path)
  generate = {
      "cbat": lambda _: llm_triggers.cbat_sentences(
          model, params, tokenizer, dataset=job.dataset, samples=job.samples, seed=job.seed,
          batch_size=job.batch_size),
      "bgm": lambda rows: llm_triggers.bgm_rewrites(
          model, params, tokenizer, rows, dataset=job.dataset, seed=job.seed,
          batch_size=job.batch_size),
      "hiddenkiller_lm": lambda rows: llm_triggers.hiddenkiller_rewrites(
          model, params, tokenizer, rows, dataset=job.dataset, seed=job.seed,
          batch_size=job.batch_size),
      "nws": lambda rows: lm_substitutes.nws_rewrites(
          model, params, tokenizer, rows, vocabulary=vocabulary,
          batch_size=2 * job.batch_size)
  }[job.attack]
  if job.attack == "nws":
    vocabulary = (record["settings"]["vocabulary"] if record
                  else _nws_vocabulary(job, model, params, tokenizer))
    logging.info("nws: trigger vocabulary %s", vocabulary)
  for lo in range(0, max(len(todo), 1), SLICE):
    part = todo[lo:lo + SLICE]
    began = time.time()
    new = generate(part)
    run = dict(command=" ".join(sys.argv), job=dataclasses.asdict(job), rows=len(part),
               seconds=round(time.time() - began, 1))
    record = _merged(record, new, run, job, model_path, out)
    trigger_cache.write_cache(out, record)
    logging.info("%s: wrote %s (%d of %d rows) in %.0f s", job.attack, out,
                 lo + len(part), len(todo), run["seconds"])
  return record


def _nws_vocabulary(job: TriggerJob, model, params, tokenizer) -> list[str]:
  """NWS's trigger vocabulary, proposed in VOCABULARY_SAMPLE training texts drawn
  with the job's seed, bounded by the whole training split's document frequencies."""
  root = data.resolve_data_path(job.data_dir, missing_ok=True)
  train = [e.text for e in data.load_classification(root, "train", dataset=job.dataset)]
  rng = np.random.default_rng(job.seed)
  sample = rng.choice(len(train), min(VOCABULARY_SAMPLE, len(train)), replace=False)
  return lm_substitutes.nws_vocabulary(model, params, tokenizer, [train[i] for i in sample],
                                       clean_texts=train, batch_size=job.batch_size)


def _merged(record: dict | None, new: dict, run: dict, job: TriggerJob, model_path: str,
            out: pathlib.Path) -> dict:
  """`record` (None: no file yet) with a generation's `new` rows and its run added."""
  if record is None:
    return {"seed": job.seed, **new, "dataset": job.dataset, "data_dir": job.data_dir,
            "model": pathlib.Path(model_path).name, "runs": [run]}
  if (record["prompt"], record["settings"]) != (new["prompt"], new["settings"]):
    raise ValueError(f"{out} was made with another prompt or settings; write a new file")
  for key in ("rewrites", "substitutions"):
    if key in new:
      record[key].update(new[key])
  if "unfiltered" in new:
    record["unfiltered"] = sorted(set(record["unfiltered"]) | set(new["unfiltered"]))
  record["runs"].append(run)
  return record
