"""Every row of `bad_inputs.CASES` raises its error, whose message names the argument or file."""

import jax
import jax.numpy as jnp
import pytest

from bad_inputs import CASES, Env
from jax_attnalign import ModelConfig, build_model


@pytest.fixture(scope="module")
def models():
  ids = jnp.ones((1, 6), jnp.int32)
  bert = build_model(ModelConfig.preset("tiny-bert"), "classification")
  llama = build_model(ModelConfig.preset("tiny-llama"))
  return (bert, bert.init(jax.random.key(0), ids)["params"],
          llama, llama.init(jax.random.key(1), ids)["params"])


def test_the_table_is_large_and_distinct():
  assert len(CASES) >= 60
  assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_gives_a_clear_error(case, models, tmp_path):
  env = Env(*models, tmp=tmp_path)
  with pytest.raises(case.error) as info:
    case.call(env)
  names = case.names.format(tmp=tmp_path)
  assert names in str(info.value), f"{case.name}: the message does not name {names!r}"
