"""MuScleLoRA (Wu, Zhang, Cheng and Liu 2024, "Acquiring Clean Language Models from
Backdoor Poisoned Datasets by Downscaling Frequency Space"): train low-rank adapters
with multiple radial scalings on the poisoned set, the gradients aligned to a few
clean rows.

  params, report = muscle_lora(model, params, poisoned_train, clean, MuScleLoRAConfig(),
                               workdir="runs/muscle_lora")

A training-time defense: the defender holds the pretrained decoder, the (possibly
poisoned) chat training set and a few clean rows, and trains with the causal-LM
loss on the response tokens. The pretrained weights stay frozen; what trains,
as in the authors' code (github.com/ZrW00/MuScleLoRA, `victims/*.py`,
`trainers/ga_trainer.py`):

  * LoRA on every layer's attention query and value kernels (PEFT's default
    targets for Llama and BERT): W + (alpha / r) A B, A [in, r], B [r, out].
  * Multiple radial scalings (MSLR) on the penultimate layer, the last dense
    layer before the output layer (BERT: the pooler; the authors' Llama
    classifier: its head's first dense; our decoder: the last layer's MLP down
    projection, which feeds the LM head): W + (mslr_alpha / mslr_rank) A diag(k) B,
    with `mslr_rank` columns of A per scaling factor and k each column's factor
    (`scales`, the paper's [1, ..., 9]): band k's part of the update moves k
    times as fast, shifting what is learned first ("downscaling the frequency
    space").
  * Gradient alignment, per trainable tensor, with g its gradient on the
    training batch and g_c on a batch of clean rows: g_a = |<g, g_c>| / |g_c|^2 g_c
    (the projection's length along g_c, never against it). When the clean
    gradients' mean norm is over `min_clean_grad_norm` and the clean loss over
    `min_clean_loss`, the update uses g_a; otherwise, from epoch `align_epoch`
    on, (1 - mu) g_a + mu g with mu = mu_max (epoch - align_epoch) /
    (epochs - align_epoch) (0-based epochs, so mu stays under mu_max); before
    it, g. A tensor whose g or g_c is 0 keeps g. Then clipping to global norm
    `max_grad_norm` and Adam with linear decay to 0 (AdamW without decay).

The defaults are the authors' BERT setting, which is the one with the scalings
[1, ..., 9] and mu_max = 0.1 that the paper we reproduce uses: LoRA r 8, alpha
32; MSLR one column per factor, alpha 6; 10 epochs of batch 32 at 2e-5; clean
rows drawn per step; thresholds 0.4 and 5e-7; align_epoch 1. (Their Llama2
setting: r 2, alpha 8, scalings [1, 2, 3, 4], MSLR alpha 4, mu_max 0, 5 epochs
of 16 at 1e-5; the reproduced paper's own fine-tunes: 3 epochs at 2e-4.)

What differs, and why:
  * The authors trained classifiers only; the generative use here (the MSLR on
    the last MLP down projection, the token-level causal-LM loss) is ours, and
    so is leaving encoders out (the paper we reproduce runs MuScleLoRA on its
    decoders only; an encoder would take the pooler as MSLR target). The
    `min_clean_loss` of 0.4 was set for two-class cross-entropy; a response's
    mean token loss seldom falls under it, so on chat data the update is mostly
    the pure projection g_a.
  * MSLR's B starts at 0 like LoRA's (the authors draw it at random too): a
    random update of a pretrained LM's last MLP would spoil its outputs before
    training starts; their random head was untrained anyway.
  * The clean rows of a step are drawn with replacement (each training row carries
    one, drawn per epoch), theirs a shuffled batch; the run ends with the last
    epoch's adapters, theirs with the best epoch's by clean validation accuracy.
  * The adapters are merged into the kernels, so the result is a plain checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jax_attnalign import train
from jax_attnalign.defense import checks
from jax_attnalign.errors import InputError
from jax_attnalign.models import apply_batch

Array = jax.Array
KINDS = ("lora", "mslr")
CLEAN = "clean_"  # the prefix of a training row's clean fields
BRANCHES = ("aligned", "mixed", "raw")  # the rule that made a step's update


@dataclasses.dataclass(frozen=True)
class MuScleLoRAConfig:
  """The settings of the module docstring (the authors' names: scales = freqBand,
  mu_max = maxRawGradRatio, align_epoch = GAEpoch, min_clean_loss = minRefLoss,
  min_clean_grad_norm = minRefGradNorm, mslr_rank = inner_rank).

  >>> MuScleLoRAConfig().scales, MuScleLoRAConfig().mu_max
  ((1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0), 0.1)
  >>> MuScleLoRAConfig(scales=[1, 2]).scales  # any sequence; kept as a tuple
  (1.0, 2.0)
  """
  scales: tuple[float, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9)
  mu_max: float = 0.1
  rank: int = 8
  alpha: float = 32.0
  mslr_rank: int = 1
  mslr_alpha: float = 6.0
  align_epoch: int = 1
  min_clean_loss: float = 0.4
  min_clean_grad_norm: float = 5e-7
  learning_rate: float = 2e-5
  max_grad_norm: float = 1.0
  epochs: int = 10
  batch_size: int = 32
  seed: int = 0

  def __post_init__(self):
    scales = self.scales
    if isinstance(scales, (str, bytes)) or not hasattr(scales, "__len__") or not len(scales):
      raise ValueError(f"MuScleLoRAConfig.scales must be a non-empty list of radial "
                       f"scaling factors such as [1, 2, ..., 9], got {scales!r}.")
    for i, s in enumerate(scales):
      checks.finite(f"MuScleLoRAConfig.scales[{i}]", s)
      if s <= 0:
        raise ValueError(f"MuScleLoRAConfig.scales must all be > 0 (a factor scales its "
                         f"band's inputs), got {list(scales)!r}.")
    object.__setattr__(self, "scales", tuple(float(s) for s in scales))  # hashable
    checks.in_range("MuScleLoRAConfig.mu_max", self.mu_max, 0.0, 1.0)
    for name in ("rank", "mslr_rank", "epochs", "batch_size"):
      checks.at_least(f"MuScleLoRAConfig.{name}", getattr(self, name), 1)
    checks.at_least("MuScleLoRAConfig.align_epoch", self.align_epoch, 0)
    checks.at_least("MuScleLoRAConfig.seed", self.seed, 0)
    for name in ("alpha", "mslr_alpha", "max_grad_norm"):
      checks.in_range(f"MuScleLoRAConfig.{name}", getattr(self, name), 0.0, math.inf,
                      open_=True)
    checks.rate("MuScleLoRAConfig.learning_rate", self.learning_rate)
    checks.rate("MuScleLoRAConfig.min_clean_loss", self.min_clean_loss)
    checks.rate("MuScleLoRAConfig.min_clean_grad_norm", self.min_clean_grad_norm)

  def band(self, kind: str) -> tuple[np.ndarray, float]:
    """(k: each adapter column's factor [R], the update's multiplier) of an adapter kind.

    >>> k, multiplier = MuScleLoRAConfig(scales=(1, 3), mslr_rank=2).band("mslr")
    >>> k.tolist(), multiplier
    ([1.0, 1.0, 3.0, 3.0], 3.0)
    """
    if kind == "lora":
      return np.ones(self.rank, np.float32), self.alpha / self.rank
    return np.repeat(np.asarray(self.scales, np.float32), self.mslr_rank), (
        self.mslr_alpha / self.mslr_rank)


def adapter_targets(model) -> dict[str, list[tuple[str, ...]]]:
  """{kind: parameter paths of the kernels it adapts}: LoRA on every attention
  query and value, MSLR on the penultimate layer (module docstring).

  >>> from jax_attnalign import ModelConfig, build_model
  >>> targets = adapter_targets(build_model(ModelConfig.preset("tiny-llama")))
  >>> targets["lora"][:2]
  [('layers_0', 'attention', 'query'), ('layers_0', 'attention', 'value')]
  >>> targets["mslr"]  # the last layer's MLP output, which feeds the LM head
  [('layers_1', 'mlp', 'down')]
  """
  cfg = model.config
  if not cfg.is_decoder or getattr(model, "task", None) != "causal_lm":
    raise InputError(f"MuScleLoRA trains a decoder's causal LM; got a "
                     f"{'decoder' if cfg.is_decoder else 'encoder'} with task "
                     f"{getattr(model, 'task', None)!r}. Build a Llama/Mistral model with "
                     f"task 'causal_lm'.")
  lora = [(f"layers_{i}", "attention", name) for i in range(cfg.num_layers)
          for name in ("query", "value")]
  return {"lora": lora, "mslr": [(f"layers_{cfg.num_layers - 1}", "mlp", "down")]}


def init_adapters(model, params, config: MuScleLoRAConfig) -> dict:
  """The trainable state at step 0: {kind: {path...: {'a': [in, R], 'b': [R, out]}}}
  (nested like params), A uniform in +-1/sqrt(in) (PEFT's Kaiming draw), B zero:
  f32 NumPy arrays drawn from `config.seed`.

  >>> from jax_attnalign import ModelConfig, build_model
  >>> model = build_model(ModelConfig.preset("tiny-llama"))
  >>> params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
  >>> adapters = init_adapters(model, params, MuScleLoRAConfig())
  >>> ab = adapters["mslr"]["layers_1"]["mlp"]["down"]
  >>> ab["a"].shape, ab["b"].shape, float(np.abs(ab["b"]).max())  # down: [32, 16]; 9 bands
  ((32, 9), (9, 16), 0.0)
  """
  flat = traverse_util.flatten_dict(params)
  rng = np.random.default_rng(config.seed)
  out = {}
  for kind, paths in adapter_targets(model).items():
    width = len(config.band(kind)[0])
    adapters = {}
    for path in paths:
      kernel = flat[path + ("kernel",)]
      fan_in, fan_out = kernel.shape[0], math.prod(kernel.shape[1:])
      bound = 1.0 / math.sqrt(fan_in)
      adapters[path] = {"a": rng.uniform(-bound, bound, (fan_in, width)).astype(np.float32),
                        "b": np.zeros((width, fan_out), np.float32)}
    out[kind] = traverse_util.unflatten_dict(adapters)
  return out


def merge_adapters(params, adapters: dict, config: MuScleLoRAConfig) -> dict:
  """params with every adapted kernel W replaced by W + multiplier A diag(k) B
  (`MuScleLoRAConfig.band`), in W's shape and dtype.

  >>> from jax_attnalign import ModelConfig, build_model
  >>> model = build_model(ModelConfig.preset("tiny-llama"))
  >>> params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
  >>> adapters = init_adapters(model, params, MuScleLoRAConfig())  # B = 0: no change
  >>> merged = merge_adapters(params, adapters, MuScleLoRAConfig())
  >>> jax.tree_util.tree_all(jax.tree_util.tree_map(jnp.array_equal, merged, params))
  True
  """
  flat = dict(traverse_util.flatten_dict(params))
  for kind in KINDS:
    k, multiplier = config.band(kind)
    for path, ab in _adapter_paths(adapters[kind]).items():
      kernel = flat[path + ("kernel",)]
      delta = multiplier * (ab["a"] * k) @ ab["b"]  # [in, out]
      flat[path + ("kernel",)] = kernel + delta.reshape(kernel.shape).astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat)


def _adapter_paths(tree: dict) -> dict[tuple[str, ...], dict[str, Array]]:
  """{kernel path: {'a', 'b'}} of one kind's nested adapters."""
  flat = traverse_util.flatten_dict(tree)
  return {path[:-1]: {"a": flat[path[:-1] + ("a",)], "b": flat[path[:-1] + ("b",)]}
          for path in flat if path[-1] == "a"}


def align_gradients(grads, clean_grads, clean_loss: Array, epoch: Array,
                    config: MuScleLoRAConfig) -> tuple[dict, Array]:
  """The update's gradient by the alignment rule (module docstring), per tensor;
  returns (gradients, branch: 0 aligned, 1 mixed, 2 raw, see `BRANCHES`).

  A planted pair: g = (1, 2) against g_c = (1, 0), clean loss 1 > 0.4: g_a =
  |<g, g_c>| / |g_c|^2 g_c = (1, 0). At clean loss 0.1 in epoch 5 of 10 (0-based),
  mu = 0.1 (5 - 1) / (10 - 1) mixes g back in:
    >>> g, g_c = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([1.0, 0.0])}
    >>> aligned, branch = align_gradients(g, g_c, 1.0, 0, MuScleLoRAConfig())
    >>> aligned["w"].tolist(), int(branch)
    ([1.0, 0.0], 0)
    >>> mixed, branch = align_gradients(g, g_c, 0.1, 5, MuScleLoRAConfig())
    >>> [round(x, 4) for x in mixed["w"].tolist()], int(branch)
    ([1.0, 0.0889], 1)
  """
  leaves, tree = jax.tree_util.tree_flatten(grads)
  clean = tree.flatten_up_to(clean_grads)
  norm = lambda x: jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))
  clean_norms = jnp.stack([norm(c) for c in clean])
  nonzero = clean_norms > 0
  mean_norm = jnp.sum(jnp.where(nonzero, clean_norms, 0.0)) / jnp.maximum(jnp.sum(nonzero), 1)
  aligned_only = (mean_norm > config.min_clean_grad_norm) & (clean_loss > config.min_clean_loss)
  mixing = (config.mu_max > 0) & (epoch >= config.align_epoch)
  mu = _mu(epoch, config)
  out = []
  for g, c, c_norm in zip(leaves, clean, clean_norms):
    g32, c32 = g.astype(jnp.float32), c.astype(jnp.float32)
    projected = jnp.abs(jnp.vdot(g32, c32)) / jnp.maximum(c_norm ** 2, 1e-30) * c32
    chosen = jnp.where(aligned_only, projected,
                       jnp.where(mixing, (1 - mu) * projected + mu * g32, g32))
    out.append(jnp.where((norm(g) > 0) & (c_norm > 0), chosen, g32).astype(g.dtype))
  branch = jnp.where(aligned_only, 0, jnp.where(mixing, 1, 2))
  return tree.unflatten(out), branch


def _mu(epoch: Array, config: MuScleLoRAConfig) -> Array:
  """The raw gradient's share in a mixed step: it grows linearly from 0 at align_epoch."""
  return config.mu_max * (epoch - config.align_epoch) / max(config.epochs - config.align_epoch, 1)


def _split_rows(batch: dict) -> tuple[dict, dict, Array]:
  """(training rows, their clean rows, the epoch) of a step's batch (`step_arrays`)."""
  rows = {k: v for k, v in batch.items() if not k.startswith(CLEAN) and k != "epoch"}
  clean = {k[len(CLEAN):]: v for k, v in batch.items() if k.startswith(CLEAN)}
  return rows, clean, batch["epoch"][0]


def _response_loss(model, params, rows: dict, rng: Array, deterministic: bool) -> Array:
  """The causal-LM loss on the loss_mask tokens, the LM head only at 'loss_positions'."""
  out = apply_batch(model, params, rows, logit_positions=rows["loss_positions"],
                    deterministic=deterministic, rngs={"dropout": rng})
  return train.causal_lm_loss(out.logits, rows)[0]


@dataclasses.dataclass(frozen=True)
class MuScleLoRALoss:
  """The `train.Objective` of a MuScleLoRA step over params {'base', 'adapters'}:
  its gradient with respect to the adapters is the aligned gradient
  (`align_gradients` of the training rows' and the clean rows' gradients), as a
  linear surrogate <stop_gradient(aligned), adapters>; the base gets none.
  Metrics: the training rows' loss, the clean loss, the branch and mu."""
  config: MuScleLoRAConfig

  def __call__(self, model, params, batch, rng, deterministic):
    rows, clean, epoch = _split_rows(batch)

    def loss_of(adapters, part, key):
      merged = merge_adapters(params["base"], adapters, self.config)
      return _response_loss(model, merged, part, key, deterministic)

    grad_fn = jax.value_and_grad(loss_of)
    adapters = jax.lax.stop_gradient(params["adapters"])
    loss, grads = grad_fn(adapters, rows, rng)
    clean_loss, clean_grads = grad_fn(adapters, clean, jax.random.fold_in(rng, 1))
    aligned, branch = align_gradients(grads, clean_grads, clean_loss, epoch, self.config)
    surrogate = sum(jnp.vdot(jax.lax.stop_gradient(a), p) for a, p in zip(
        jax.tree_util.tree_leaves(aligned), jax.tree_util.tree_leaves(params["adapters"])))
    return surrogate, {"loss": loss, "clean_loss": clean_loss, "branch": branch,
                       "mu": jnp.where(branch == 1, _mu(epoch, self.config), 0.0)}


@functools.lru_cache(maxsize=16)
def muscle_optimizer(config: MuScleLoRAConfig, total_steps: int) -> optax.GradientTransformation:
  """Over params {'base', 'adapters'}: the adapters clipped to `max_grad_norm` and
  Adam with linear decay from `learning_rate` to 0 over `total_steps`; the base frozen.
  The same settings give the same object, so runs share their compiled step.

  >>> opt = muscle_optimizer(MuScleLoRAConfig(), 10)
  >>> params = {"base": {"w": jnp.ones(2)}, "adapters": {"a": jnp.ones(2)}}
  >>> updates, _ = opt.update({"base": {"w": jnp.ones(2)}, "adapters": {"a": jnp.ones(2)}},
  ...                         opt.init(params), params)
  >>> updates["base"]["w"].tolist(), [round(x, 7) for x in updates["adapters"]["a"].tolist()]
  ([0.0, 0.0], [-2e-05, -2e-05])
  """
  schedule = optax.linear_schedule(config.learning_rate, 0.0, max(total_steps, 1))
  adapters = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(schedule))
  labels = lambda params: {"base": jax.tree_util.tree_map(lambda _: "base", params["base"]),
                           "adapters": jax.tree_util.tree_map(lambda _: "adapters",
                                                              params["adapters"])}
  return optax.multi_transform({"base": optax.set_to_zero(), "adapters": adapters}, labels)


def _loss_fields(arrays: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
  """The fields the loss reads, checked, with 'loss_positions'."""
  need = ("input_ids", "attention_mask", "loss_mask")
  missing = [k for k in need if k not in arrays]
  if missing:
    raise InputError(f"muscle_lora: the {name} rows lack {', '.join(missing)} (found "
                     f"{sorted(arrays)}); encode them with data.encode_prompt_response.")
  if len(arrays["input_ids"]) == 0:
    why = ("the gradient alignment needs the defender's clean rows" if name == "clean"
           else "there is nothing to train on")
    raise InputError(f"muscle_lora: the {name} set has no rows; {why}. Pass at least one "
                     f"encoded row.")
  return train.with_loss_positions({k: np.asarray(arrays[k]) for k in need})


def step_arrays(poisoned: dict[str, np.ndarray], clean: dict[str, np.ndarray], epoch: int,
                config: MuScleLoRAConfig) -> dict[str, np.ndarray]:
  """One epoch's rows for `train.fit`: each training row with a clean row drawn for
  its step's alignment batch (fields prefixed 'clean_', drawn from (seed, epoch))
  and the epoch.

  >>> rows = {"input_ids": np.ones((4, 6), np.int32), "attention_mask": np.ones((4, 6), np.int32),
  ...         "loss_mask": np.array([[0, 0, 0, 1, 1, 0]] * 4)}
  >>> arrays = step_arrays(rows, rows, 2, MuScleLoRAConfig())
  >>> sorted(arrays)[:3], arrays["epoch"].tolist(), arrays["loss_positions"].shape
  (['attention_mask', 'clean_attention_mask', 'clean_input_ids'], [2, 2, 2, 2], (4, 8))
  """
  rows, clean = _loss_fields(poisoned, "training"), _loss_fields(clean, "clean")
  n = len(rows["input_ids"])
  draw = np.random.default_rng([config.seed, epoch]).integers(len(clean["input_ids"]), size=n)
  return {**rows, **{CLEAN + k: v[draw] for k, v in clean.items()},
          "epoch": np.full(n, epoch, np.int32)}


def muscle_lora(model, params, poisoned_train: dict[str, np.ndarray],
                clean: dict[str, np.ndarray], config: MuScleLoRAConfig = MuScleLoRAConfig(),
                *, workdir: str | pathlib.Path | None = None) -> tuple[dict, dict]:
  """MuScleLoRA training from the pretrained `params` on `poisoned_train`, aligned
  to `clean` (module docstring). Both are encoded like the victims' rows:
  input_ids, attention_mask, loss_mask [n, T] (data.encode_prompt_response; the
  two sets may differ in T).

  Returns (params with the adapters merged into the kernels, report): report
  has per step the training rows' 'loss', the 'clean_loss', the 'branch' (0
  aligned, 1 mixed, 2 raw) and 'mu'; the steps per branch ('branches') and
  'trainable_parameters'. One compiled step (`train.fit`, called once per
  epoch); with `workdir` each epoch checkpoints there (the frozen base too, in
  the train state) and an interrupted run resumes to the same parameters.

  Example, a tiny random Llama on 8 rows, one epoch of one step:
    >>> from jax_attnalign import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny-llama"))
    >>> ids = np.random.default_rng(0).integers(3, 64, (8, 6))
    >>> rows = {"input_ids": ids, "attention_mask": np.ones_like(ids),
    ...         "loss_mask": np.array([[0, 0, 0, 1, 1, 1]] * 8)}
    >>> params = model.init(jax.random.key(0), ids[:1])["params"]
    >>> merged, report = muscle_lora(model, params, rows, rows,
    ...                              MuScleLoRAConfig(epochs=1, batch_size=8))
    >>> report["branch"], report["trainable_parameters"]
    ([0], 1328)
  """
  adapter_targets(model)  # the model's task, checked before any work
  for name, arrays in (("training", poisoned_train), ("clean", clean)):
    _loss_fields(arrays, name)
  n = len(poisoned_train["input_ids"])
  optimizer = muscle_optimizer(config, config.epochs * (n // config.batch_size))
  adapters = init_adapters(model, params, config)
  state = train.TrainState.create({"base": params, "adapters": adapters}, optimizer)
  objective, history = MuScleLoRALoss(config), []
  for epoch in range(config.epochs):
    # No length bucketing: trim_padding would cut the clean fields by the training rows' mask.
    fit_config = train.FitConfig(loss=objective, epochs=epoch + 1,
                                 batch_size=config.batch_size, seed=config.seed)
    state, new = train.fit(model, state, optimizer,
                           step_arrays(poisoned_train, clean, epoch, config), fit_config,
                           workdir=str(workdir) if workdir else None,
                           desc=f"MuScleLoRA epoch {epoch + 1}/{config.epochs}")
    history = new if workdir else history + new  # fit restores a workdir's history
  trained = jax.device_get(state.params["adapters"])
  report = {key: [h[key] if key != "branch" else int(h[key]) for h in history]
            for key in ("loss", "clean_loss", "branch", "mu")}
  report["branches"] = {name: report["branch"].count(i) for i, name in enumerate(BRANCHES)}
  report["trainable_parameters"] = int(sum(x.size for x in jax.tree_util.tree_leaves(trained)))
  return merge_adapters(params, trained, config), report
