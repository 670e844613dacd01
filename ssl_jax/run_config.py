"""What a run's config may say: the checks made before anything runs.

`validate_config` is called before any data is read or code compiled, so a bad
field stops the run with one line naming it (and its allowed values).
"""

from __future__ import annotations

import copy
from typing import Optional

import jax
import ml_collections

from ssl_jax import bank_objective
from ssl_jax import data as data_lib
from ssl_jax import decoders
from ssl_jax import mapping
from ssl_jax import methods
from ssl_jax import models
from ssl_jax import optim
from ssl_jax import profiling
from ssl_jax.evaluate import lowshot


class ConfigError(ValueError):
  """A config field has a value the run cannot use; names the field."""


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks every field the run relies on, before any data is read or code compiled."""
  def allowed(field, value, options):
    if value not in options:
      raise ConfigError(f"config.{field} must be one of {list(options)}, got {value!r}.")
  allowed("method", config.method, methods.names())
  allowed("bank.init", config.bank.init, bank_objective.BANK_INITS)
  allowed("bank.update_rule", config.bank.update_rule, bank_objective.BANK_UPDATES)
  allowed("bank.calibrate_bn", config.bank.calibrate_bn, bank_objective.CALIBRATE_BN)
  allowed("bank.dtype", config.bank.get("dtype", "float32"), ("float32", "bfloat16"))
  allowed("loss.kl_direction", config.loss.kl_direction, ("q_p", "p_q"))
  allowed("optim.name", config.optim.name, optim.OPTIMIZERS)
  allowed("model.name", config.model.name, models.names())
  backbone = models.get(config.model.name)
  if "stem" in backbone.fields:
    allowed("model.stem", config.model.stem, backbone.stems)
  if "pool" in backbone.fields:
    allowed("model.pool", models.field(config.model, "pool"), models.POOLS)
  if "patch_size" in backbone.fields:
    patch, size = models.field(config.model, "patch_size"), int(config.data.image_size)
    if not (isinstance(patch, int) and patch > 0 and size % patch == 0):
      raise ConfigError(f"config.model.patch_size must be a positive divisor of "
                        f"config.data.image_size ({size}), got {patch!r}.")
  allowed("model.dtype", config.model.dtype, ("float32", "bfloat16"))
  allowed("model.head", config.model.head, models.HEADS)
  data_lib.parse_source(config.data.source)
  if not config.loss.temperature > 0:
    raise ConfigError(f"config.loss.temperature must be > 0, got {config.loss.temperature}.")
  if not 0.0 <= config.bank.momentum <= 1.0:
    raise ConfigError(f"config.bank.momentum must be in [0, 1], got {config.bank.momentum}.")
  try:
    profiling.profile_window(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if message := lowshot.check_config(config.eval):
    raise ConfigError(message)
  if int(config.eval.get("freshness_probe", 0)) < 0:
    raise ConfigError(f"config.eval.freshness_probe must be >= 0 (0: off), got "
                      f"{config.eval.freshness_probe}.")
  if config.bank.lr < 0:
    raise ConfigError(f"config.bank.lr must be >= 0, got {config.bank.lr}.")
  if config.loss.kl_weight < 0:
    raise ConfigError(f"config.loss.kl_weight must be >= 0, got {config.loss.kl_weight}.")
  shards = num_shards(config)
  requested = config.data.get("shards", 0)
  if requested < 0 or shards % jax.process_count():
    raise ConfigError(f"config.data.shards ({requested}) must be 0 (one shard per process) "
                      f"or a multiple of the process count ({jax.process_count()}).")
  if config.batch_size % shards:
    raise ConfigError(f"config.batch_size ({config.batch_size}) must be a multiple of the "
                      f"number of data shards ({shards}).")
  for field in ("fraction", "test_fraction", "label_fraction"):
    v = config.data.get(field, 1.0)
    if not 0.0 < v <= 1.0:
      raise ConfigError(f"config.data.{field} must be in (0, 1], got {v}.")
  if config.data.get("label_fraction", 1.0) < 1.0 and (
      jax.process_count() > 1 or config.data.get("stream", False)):
    raise ConfigError("config.data.label_fraction < 1 needs the in-memory input "
                      "(config.data.stream=False) and one process, for now.")
  try:
    methods.get(config.method).validate(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.data.get("stream", False):
    if config.data.get("on_device", False) or not config.augment.on_device:
      raise ConfigError("config.data.stream=True streams to the device's augmentation: it "
                        "needs config.data.on_device=False and config.augment.on_device=True.")
    if int(config.data.get("workers", 0)) < -1:
      raise ConfigError(f"config.data.workers must be >= 0, or -1 for one per core, got "
                        f"{config.data.workers}.")
    if why := decoders.check_available(config.data.get("decoder", "pillow")):
      raise ConfigError(why)  # (only a streamed run decodes per step)
  if int(config.data.get("prefetch", 2)) < 1:
    raise ConfigError(f"config.data.prefetch must be >= 1, got {config.data.prefetch}.")
  allowed("parallel", config.get("parallel", "pmap"), mapping.PARALLEL)
  if int(config.get("preemption_check_steps", 1)) < 1:
    raise ConfigError(f"config.preemption_check_steps must be >= 1, got "
                      f"{config.preemption_check_steps}.")
  if int(config.bank.get("shard_above", 0)) < 0:
    raise ConfigError(f"config.bank.shard_above must be >= 0 (0: never automatically), got "
                      f"{config.bank.shard_above}.")
  allowed("eval.knn_source", config.eval.get("knn_source", "embed"), ("embed", "bank"))
  allowed("eval.feature_dtype", config.eval.get("feature_dtype", "float32"),
          ("float32", "bfloat16"))
  if config.eval.get("knn_source", "embed") == "bank" and not methods.get(
      config.method).uses_bank:
    raise ConfigError(f"config.eval.knn_source='bank' needs a method with a memory bank "
                      f"(ours, npid); {config.method} has none.")
  if config.data.get("on_device", False):
    if not config.augment.on_device:
      raise ConfigError("config.data.on_device=True needs config.augment.on_device=True.")
  if config.num_epochs < 1:
    raise ConfigError(f"config.num_epochs must be >= 1, got {config.num_epochs}.")
  if float(config.get("train_flops", 0) or 0) < 0:
    raise ConfigError(f"config.train_flops must be >= 0 (0: off), got {config.train_flops}.")
  total_devices = num_devices * jax.process_count()
  if config.batch_size < 1 or config.batch_size % total_devices:
    raise ConfigError(
        f"config.batch_size ({config.batch_size}) must be a positive multiple of the "
        f"device count ({total_devices}).")


def shard_large_bank(config: ml_collections.ConfigDict, num_examples: int,
                     num_devices: int) -> tuple[ml_collections.ConfigDict, Optional[str]]:
  """The large-bank guard (`config.bank.shard_above`): (config, note).

  With more than one device and more bank rows than `bank.shard_above`, a
  bank kept whole on every device would cost N x d per device and an N x d
  all-reduce per step; such a run gets `bank.sharded=True` (a copy of the
  config) and a one-line note. A config whose objective cannot be sharded
  raises ConfigError naming the field. Otherwise the config comes back as is.
  """
  limit = int(config.bank.get("shard_above", 0))
  if (not methods.get(config.method).uses_bank or config.bank.get("sharded", False) or not limit
      or num_examples <= limit or num_devices < 2):
    return config, None
  itemsize = 2 if config.bank.get("dtype", "float32") == "bfloat16" else 4
  whole = num_examples * int(config.model.embed_dim) * itemsize
  try:
    bank_objective.check_closed_form(bank_objective.BankMethodConfig.from_config(config),
                                     "bank.sharded")
  except ValueError as e:
    raise ConfigError(
        f"the bank's {num_examples:,} rows are more than config.bank.shard_above ({limit:,}), "
        f"but it cannot be sharded over the {num_devices} devices: {e} Change that, or set "
        f"config.bank.shard_above=0 to keep {whole / 2**20:,.0f} MiB on every device.") from None
  config = copy.deepcopy(config)
  with config.unlocked():
    config.bank.sharded = True
  return config, (f"bank: {num_examples:,} rows > config.bank.shard_above ({limit:,}), so it is "
                  f"sharded over the {num_devices} devices ({whole / num_devices / 2**20:,.0f} "
                  f"MiB each instead of {whole / 2**20:,.0f} MiB and an all-reduce of that size "
                  f"per step); --config.bank.shard_above=0 keeps it whole.")


def num_shards(config) -> int:
  """Data shards: config.data.shards, or one per process when it is 0."""
  return int(config.data.get("shards", 0)) or jax.process_count()


def bank_lr_rule(batch_size: int, temperature: float) -> float:
  """The configs' gradient bank step B tau / 2 (configs/default.py says why)."""
  return 0.5 * batch_size * temperature


def bank_lr_note(config: ml_collections.ConfigDict) -> Optional[str]:
  """A line for runs whose gradient bank step is off the configs' rule by 2x or more, else None.

  `bank.lr` is an absolute step size: the configs set it to B * tau / 2 for
  their own batch and temperature (configs/default.py says why), so a run
  that changes `batch_size` or `loss.temperature` alone changes the bank's
  step too. The ablation measured 4x the rule's step as unstable and 1/4 as
  half a point worse (experiments/ablation).
  """
  if not methods.get(config.method).uses_bank or config.bank.update_rule != "grad":
    return None
  rule = bank_lr_rule(config.batch_size, config.loss.temperature)
  ratio = config.bank.lr / rule
  if 0.5 < ratio < 2.0:
    return None
  return (f"note: bank.lr = {config.bank.lr:g} is {ratio:.2g}x the configs' rule B * tau / 2 = "
          f"{rule:g} for batch {config.batch_size} and temperature {config.loss.temperature:g} "
          f"(4x was unstable in experiments/ablation); --config.bank.lr={rule:g} follows it.")


def optim_note(config: ml_collections.ConfigDict) -> Optional[str]:
  """A line for a run whose optimizer is not the one its backbone is usually trained with.

  Each backbone states its usual `config.optim` settings (`models.Backbone.optim`:
  SGD for the ResNets and MobileNetV2, AdamW for the ViTs); the run uses
  what the config says and this note names the overrides that would follow them.
  """
  backbone = models.get(config.model.name)
  usual = dict(backbone.optim)
  if config.optim.name == usual["name"]:
    return None
  overrides = " ".join(f"--config.optim.{k}={v}" for k, v in usual.items())
  return (f"note: {backbone.name} is usually trained with optim.name={usual['name']!r}, this "
          f"run uses {config.optim.name!r}; {overrides} follows the backbone's usual recipe "
          f"(README, 'Add a backbone').")


def warmup_note(config: ml_collections.ConfigDict) -> Optional[str]:
  """A line for a run no longer than its warmup, else None.

  `optim.learning_rate_schedule` cuts such a warmup to the run's length: the
  learning rate rises for the whole run and reaches optim.base_lr's peak only
  at the last step, with no decay. Legal, but rarely what was meant (a
  shipped config shortened with --config.num_epochs, say).
  """
  warmup, epochs = float(config.optim.warmup_epochs), int(config.num_epochs)
  if warmup <= 0 or warmup < epochs:
    return None
  return (f"note: optim.warmup_epochs={warmup:g} is not less than num_epochs={epochs}: the "
          f"warmup is cut to the run's length, so the learning rate rises for the whole run "
          f"and never decays; --config.optim.warmup_epochs={max(epochs // 10, 0)} would "
          f"leave room for the cosine decay.")
