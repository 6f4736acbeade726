"""The one model configuration: a frozen dataclass that round-trips HF `config.json`.

BERT, Llama and Mistral share it; fields that a family does not use keep their
defaults. Fields of the HF config that we do not model (ids, label names,
initialiser ranges, ...) are kept verbatim in `hf_extra` so that an exported
checkpoint carries them back.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from jax_attnalign import validation

ENCODER_TYPES = ("bert",)
DECODER_TYPES = ("llama", "mistral")
MODEL_TYPES = ENCODER_TYPES + DECODER_TYPES
TASKS = ("base", "classification", "masked_lm", "causal_lm")
ROPE_TYPES = ("default", "linear", "llama3")

_NONE_MEANS = {"num_kv_heads": "as many as num_heads", "head_dim": "hidden_size // num_heads",
               "sliding_window": "no window"}

_REQUIRED_HF = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size")
# Keys that `from_hf_config` turns into fields; everything else goes to hf_extra.
_CONSUMED = {
    "model_type", "vocab_size", "hidden_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
    "hidden_act", "max_position_embeddings", "layer_norm_eps", "rms_norm_eps",
    "type_vocab_size", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "attention_dropout", "pad_token_id", "bos_token_id", "eos_token_id",
    "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings",
    "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window",
    "num_labels", "id2label", "label2id", "architectures", "position_embedding_type",
    "transformers_version", "_name_or_path", "torch_dtype", "dtype",
}

# Full-size architectures, for shape checks, benchmarks and random-weight scans,
# and tiny ones (2 layers x 4 heads) for examples and smoke tests.
_PRESETS: dict[str, dict[str, Any]] = {
    "llama2-7b": dict(
        model_type="llama", vocab_size=32000, hidden_size=4096, num_layers=32,
        num_heads=32, intermediate_size=11008, hidden_act="silu",
        max_position_embeddings=4096, norm_eps=1e-5, bos_token_id=1,
        eos_token_id=(2,)),
    "mistral-7b": dict(
        model_type="mistral", vocab_size=32000, hidden_size=4096, num_layers=32,
        num_heads=32, num_kv_heads=8, intermediate_size=14336, hidden_act="silu",
        max_position_embeddings=32768, norm_eps=1e-5, sliding_window=4096,
        bos_token_id=1, eos_token_id=(2,)),
    "minilm-l6": dict(
        model_type="bert", vocab_size=30522, hidden_size=384, num_layers=6,
        num_heads=12, intermediate_size=1536, hidden_act="gelu",
        max_position_embeddings=512, norm_eps=1e-12, pad_token_id=0),
    "tiny-bert": dict(
        model_type="bert", vocab_size=64, hidden_size=16, num_layers=2, num_heads=4,
        intermediate_size=32, max_position_embeddings=16, pad_token_id=0),
    "tiny-llama": dict(
        model_type="llama", vocab_size=64, hidden_size=16, num_layers=2, num_heads=4,
        num_kv_heads=2, intermediate_size=32, hidden_act="silu",
        max_position_embeddings=32, norm_eps=1e-5, pad_token_id=0, bos_token_id=1,
        eos_token_id=(2,)),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a BERT, Llama or Mistral model (hashable: usable as a jit static).

  Example:
    >>> cfg = ModelConfig(model_type="bert", vocab_size=64, hidden_size=16, num_layers=2,
    ...                   num_heads=4, intermediate_size=32, max_position_embeddings=16)
    >>> cfg.head_dim, cfg.is_decoder
    (4, False)
    >>> cfg.to_hf_config()["num_attention_heads"]  # HF config.json keys
    4
  """

  model_type: str
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  num_kv_heads: int | None = None  # None: as many as query heads (no GQA)
  head_dim: int | None = None  # None: hidden_size // num_heads
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  norm_eps: float = 1e-12
  # Encoder (BERT) only.
  type_vocab_size: int = 2
  hidden_dropout: float = 0.0
  attention_dropout: float = 0.0
  # Decoder (Llama, Mistral) only.
  rope_theta: float = 10000.0
  rope_type: str = "default"
  rope_scaling: tuple[tuple[str, float], ...] = ()  # factor, low/high_freq_factor, ...
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  sliding_window: int | None = None  # >= 1 (Mistral); None: no window (0 is refused)
  # Token ids and labels.
  pad_token_id: int | None = None
  bos_token_id: int | None = None
  eos_token_id: tuple[int, ...] = ()
  num_labels: int = 2
  id2label: tuple[tuple[int, str], ...] = ()
  # Whatever else the HF config held, as (key, JSON text) pairs.
  hf_extra: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(
          f"Unknown model_type {self.model_type!r}: jax_attnalign supports "
          f"{', '.join(MODEL_TYPES)}.")
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size", "num_labels"):
      validation.at_least(f"ModelConfig.{name}", getattr(self, name), 1)
    for name in ("num_kv_heads", "head_dim", "sliding_window"):
      if getattr(self, name) is not None:  # sliding_window=0 would hide the past, not the future
        validation.at_least(f"ModelConfig.{name} (None: {_NONE_MEANS[name]})",
                            getattr(self, name), 1)
    for name in ("hidden_dropout", "attention_dropout"):
      validation.in_range(f"ModelConfig.{name}", getattr(self, name), 0.0, 1.0)
    for name in ("norm_eps", "rope_theta"):
      validation.finite(f"ModelConfig.{name}", getattr(self, name))
      if getattr(self, name) <= 0:
        raise ValueError(f"ModelConfig.{name} must be > 0, got {getattr(self, name)!r}.")
    if self.num_kv_heads is None:
      object.__setattr__(self, "num_kv_heads", self.num_heads)
    if self.head_dim is None:
      if self.hidden_size % self.num_heads:
        raise ValueError(
            f"hidden_size {self.hidden_size} is not divisible by num_heads "
            f"{self.num_heads}; set head_dim explicitly.")
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads {self.num_heads} is not a multiple of num_kv_heads "
          f"{self.num_kv_heads} (grouped-query attention needs whole groups).")
    if self.model_type in DECODER_TYPES and self.head_dim % 2:
      raise ValueError(f"Rotary embeddings need an even head_dim, got {self.head_dim}.")
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(
          f"Unsupported rope_type {self.rope_type!r}; supported: {ROPE_TYPES}.")
    if isinstance(self.eos_token_id, int):
      object.__setattr__(self, "eos_token_id", (self.eos_token_id,))

  @property
  def is_decoder(self) -> bool:
    return self.model_type in DECODER_TYPES

  @property
  def labels(self) -> dict[int, str]:
    return dict(self.id2label) or {i: f"LABEL_{i}" for i in range(self.num_labels)}

  @classmethod
  def preset(cls, name: str, **changes) -> "ModelConfig":
    """A named architecture: full-size 'llama2-7b', 'mistral-7b', 'minilm-l6', or
    the tiny random-weight 'tiny-bert' and 'tiny-llama' (2 layers x 4 heads).

    >>> ModelConfig.preset("minilm-l6").num_heads
    12
    """
    if name not in _PRESETS:
      raise ValueError(f"Unknown preset {name!r}; choose from {sorted(_PRESETS)}.")
    return cls(**{**_PRESETS[name], **changes})

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf_config(cls, hf: Mapping[str, Any] | Any) -> "ModelConfig":
    """Builds a config from a HF `config.json` dict or a `PretrainedConfig`."""
    if not isinstance(hf, Mapping):
      hf = hf.to_dict()
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
      raise ValueError(
          f"Unknown model_type {model_type!r} in config.json: jax_attnalign "
          f"supports {', '.join(MODEL_TYPES)}. Convert the checkpoint to one of "
          "these architectures or add a model family in jax_attnalign/models/.")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(
          f"position_embedding_type={hf['position_embedding_type']!r} is not "
          "supported; only 'absolute' BERT position embeddings are.")
    missing = [k for k in _REQUIRED_HF if k not in hf]
    if missing:
      raise ValueError(f"config.json lacks {', '.join(missing)}, which every "
                       f"{model_type} config.json has.")
    decoder = model_type in DECODER_TYPES
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    rope_theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    sliding = hf.get("sliding_window")
    if model_type != "mistral" or hf.get("use_sliding_window") is False:
      sliding = None
    eos = hf.get("eos_token_id")
    id2label = hf.get("id2label") or {}
    num_labels = hf.get("num_labels", len(id2label) or 2)
    kwargs = dict(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads"),
        head_dim=hf.get("head_dim"),
        intermediate_size=hf["intermediate_size"],
        hidden_act=hf.get("hidden_act", "silu" if decoder else "gelu"),
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        norm_eps=hf.get("rms_norm_eps" if decoder else "layer_norm_eps",
                        1e-6 if decoder else 1e-12),
        type_vocab_size=hf.get("type_vocab_size", 2),
        hidden_dropout=hf.get("hidden_dropout_prob", 0.0) or 0.0,
        attention_dropout=(hf.get("attention_probs_dropout_prob")
                           or hf.get("attention_dropout") or 0.0),
        rope_theta=float(rope_theta),
        rope_type=rope_type,
        rope_scaling=tuple(sorted((k, float(v)) for k, v in rope.items()
                                  if isinstance(v, (int, float)))),
        tie_word_embeddings=hf.get("tie_word_embeddings", not decoder),
        attention_bias=hf.get("attention_bias", False),
        mlp_bias=hf.get("mlp_bias", False),
        sliding_window=sliding,
        pad_token_id=hf.get("pad_token_id"),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=() if eos is None else tuple(
            eos if isinstance(eos, (list, tuple)) else [eos]),
        num_labels=num_labels,
        id2label=tuple(sorted((int(k), str(v)) for k, v in id2label.items())),
        hf_extra=tuple(sorted((k, json.dumps(v)) for k, v in hf.items()
                              if k not in _CONSUMED)),
    )
    return cls(**kwargs)

  def to_hf_config(self, architecture: str | None = None) -> dict[str, Any]:
    """The `config.json` dict transformers reads; `architecture` e.g. 'BertModel'."""
    hf: dict[str, Any] = {k: json.loads(v) for k, v in self.hf_extra}
    hf.update(
        model_type=self.model_type,
        vocab_size=self.vocab_size,
        hidden_size=self.hidden_size,
        num_hidden_layers=self.num_layers,
        num_attention_heads=self.num_heads,
        intermediate_size=self.intermediate_size,
        hidden_act=self.hidden_act,
        max_position_embeddings=self.max_position_embeddings,
        pad_token_id=self.pad_token_id,
        id2label={str(k): v for k, v in self.labels.items()},
        label2id={v: k for k, v in self.labels.items()},
        tie_word_embeddings=self.tie_word_embeddings,
    )
    if architecture:
      hf["architectures"] = [architecture]
    if self.is_decoder:
      rope = {"rope_type": self.rope_type, "rope_theta": self.rope_theta,
              **dict(self.rope_scaling)}
      hf.update(
          num_key_value_heads=self.num_kv_heads,
          head_dim=self.head_dim,
          rms_norm_eps=self.norm_eps,
          attention_dropout=self.attention_dropout,
          rope_theta=self.rope_theta,
          rope_parameters=rope,
          attention_bias=self.attention_bias,
          mlp_bias=self.mlp_bias,
          bos_token_id=self.bos_token_id,
          eos_token_id=(list(self.eos_token_id) if len(self.eos_token_id) > 1
                        else (self.eos_token_id[0] if self.eos_token_id else None)),
      )
      if self.model_type == "mistral":
        hf["sliding_window"] = self.sliding_window
    else:
      hf.update(
          layer_norm_eps=self.norm_eps,
          type_vocab_size=self.type_vocab_size,
          hidden_dropout_prob=self.hidden_dropout,
          attention_probs_dropout_prob=self.attention_dropout,
          position_embedding_type="absolute",
      )
    return hf
