"""Test set-up: 8 fake CPU devices before jax is imported, offline HF, data fixtures."""

import os

_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def xla_flags_with_devices(count: int) -> str:
  """This process's XLA_FLAGS with `count` fake CPU devices in place of any count set.

  The suite runs on 8. A test that starts a full MiniLM pipeline in a child process
  (a notebook kernel, a binary) gives it 2: every device holds a replica of the model
  and its optimizer state, and 8 took such a child to about 8 GB beside the other worker.
  """
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICES_FLAG)]
  return " ".join(kept + [f"{_DEVICES_FLAG}={count}"])


if f"{_DEVICES_FLAG}=8" not in os.environ.get("XLA_FLAGS", ""):  # xdist workers inherit it
  os.environ["XLA_FLAGS"] = xla_flags_with_devices(8)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

from jax_attnalign.assets import bundled_minilm_path, bundled_smollm2_path  # noqa: E402

DATA_ENV = "JAX_ATTNALIGN_DATA"
# With this set to 1 (CI, which has the data), a test skipped for missing data fails the run.
REQUIRE_DATA_ENV = "JAX_ATTNALIGN_REQUIRE_DATA"
MISSING_DATA = "real data missing:"  # every missing-data skip reason starts so


def require_data(path: pathlib.Path) -> pathlib.Path:
  """`path` when it exists, else skips the test as one that lacks the real data."""
  if not path.exists():
    pytest.skip(f"{MISSING_DATA} {path} (set {DATA_ENV} to the data folder)")
  return path


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The real public data beside the checkout (../shared/data), or $JAX_ATTNALIGN_DATA."""
  default = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
  return require_data(pathlib.Path(os.environ.get(DATA_ENV, default)))


def _missing_data_skips(config) -> list:
  """The reports of tests skipped for missing data (with xdist: the controller sees
  every worker's reports)."""
  reporter = config.pluginmanager.get_plugin("terminalreporter")
  skipped = reporter.stats.get("skipped", []) if reporter else []
  # A skip's longrepr is (file, line, "Skipped: reason").
  return [r for r in skipped if isinstance(r.longrepr, tuple) and MISSING_DATA in r.longrepr[2]]


def _data_required() -> bool:
  return os.environ.get(REQUIRE_DATA_ENV) == "1"


def pytest_terminal_summary(terminalreporter, config):
  missing = len(_missing_data_skips(config))
  fails = missing and _data_required()
  terminalreporter.write_sep(
      "=", f"{missing} test(s) skipped for missing real data (${DATA_ENV})"
      + (f"; ${REQUIRE_DATA_ENV}=1 fails the run" if fails else ""),
      red=bool(fails), yellow=bool(missing and not fails), green=not missing)


def pytest_sessionfinish(session):
  if hasattr(session.config, "workerinput"):
    return  # an xdist worker: the controller decides
  if (_data_required() and session.exitstatus == pytest.ExitCode.OK
      and _missing_data_skips(session.config)):
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def minilm_path() -> pathlib.Path:
  """The bundled pretrained MiniLM checkpoint directory."""
  try:
    return bundled_minilm_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))


SMALL_LENGTH = 32


@pytest.fixture(scope="session")
def small_badnets(shared_data, minilm_path):
  """A small BERT (2 layers x 8 heads) trained from scratch on 1,600 real SST-2
  sentences with BadNets (20%, target 1): {'model', 'params', 'tokenizer',
  'attack', 'sst2'}. Built once per test process (about 30 s on 2 cores)."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax_attnalign import attacks, data  # pylint: disable=g-import-not-at-top
  from jax_attnalign.models import ModelConfig, build_model  # pylint: disable=g-import-not-at-top
  from jax_attnalign.train import FitConfig, TrainState, fit  # pylint: disable=g-import-not-at-top
  tokenizer = data.load_tokenizer(minilm_path)
  sst2 = shared_data / "sst2" / "clean"
  attack = attacks.make_attack("badnets", target=1, poison_rate=0.2, seed=0)
  train_set = attack.poison(data.load_classification(sst2, "train", limit=1600))
  cfg = ModelConfig(model_type="bert", vocab_size=len(tokenizer), hidden_size=64,
                    num_layers=2, num_heads=8, intermediate_size=96,
                    max_position_embeddings=SMALL_LENGTH)
  model = build_model(cfg, "classification")
  arrays = data.encode_classification(train_set, tokenizer, SMALL_LENGTH)
  arrays.pop("poisoned")
  params = model.init(jax.random.PRNGKey(0), arrays["input_ids"][:2])["params"]
  optimizer = optax.adam(2e-3)
  state, _ = fit(model, TrainState.create(params, optimizer), optimizer, arrays,
                 FitConfig(epochs=6, batch_size=32, dropout=False))  # 300 steps
  return {"model": model, "params": jax.device_get(state.params), "tokenizer": tokenizer,
          "attack": attack, "sst2": sst2}


@pytest.fixture(scope="session")
def tiny_chat_llama(tmp_path_factory):
  """A tiny random Llama (2 layers x 4 heads, GQA 2:1) with SmolLM2's tokenizer and
  chat template, saved as a HF checkpoint folder."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax_attnalign  # pylint: disable=g-import-not-at-top
  from jax_attnalign import data  # pylint: disable=g-import-not-at-top
  from jax_attnalign.models import ModelConfig, build_model  # pylint: disable=g-import-not-at-top
  try:
    path = bundled_smollm2_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  tokenizer = data.load_tokenizer(path)
  config = ModelConfig(model_type="llama", vocab_size=len(tokenizer), hidden_size=32,
                       num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48,
                       max_position_embeddings=256, norm_eps=1e-5, tie_word_embeddings=True,
                       bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=(tokenizer.eos_token_id,),
                       pad_token_id=tokenizer.pad_token_id)
  model = build_model(config, "causal_lm")
  params = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"]
  folder = tmp_path_factory.mktemp("tiny_chat_llama")
  jax_attnalign.save_pretrained(model, params, folder, tokenizer=tokenizer)
  return folder
