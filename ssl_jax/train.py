"""Training: the pure train step, its pmap wiring, and the epoch loop (the shell).

Data flow of one step (per replica, D replicas on the `batch` axis):
  uint8 images [b, H, W, 3] + instance indices [b]
  -> on-device augmentation (one view per image)
  -> encoder -> z [b, d] (unit rows)
  -> logits against the replicated bank [b, N] (or, with bank.sharded, the
     all-gathered batch against this device's rows) -> L_ce + lambda * L_skl
     (with bank.fused or bank.sharded, the loss, its gradient in z and the
     bank's update come from one softmax pass; the encoder's backward pass
     starts from that gradient)
  -> gradients pmean'd over the axis -> optax update
  -> bank transition of the *global* batch (psum of G^T Z, or all-gathered
     z and indices for the momentum rule), identical on every replica.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssl_jax import augment
from ssl_jax import bank as bank_lib
from ssl_jax import checkpoint
from ssl_jax import data as data_lib
from ssl_jax import devices
from ssl_jax import evaluate
from ssl_jax import losses
from ssl_jax import models
from ssl_jax import optim
from ssl_jax import preemption
from ssl_jax import reporting
from ssl_jax import run_files
from ssl_jax import sharded_bank
from ssl_jax.methods import bank_method
from ssl_jax.methods import byol
from ssl_jax.methods import simclr
from ssl_jax.run_config import (BANK_METHODS, ConfigError, bank_lr_note, num_shards,
                                validate_config)
from ssl_jax.state import TrainState, create_train_state


# ----------------------------------------------------------------------------
# Pure functions.
# ----------------------------------------------------------------------------

def step_key(rng: jax.Array, step: jax.Array) -> jax.Array:
  """The augmentation key of step `step`; images fold in their instance index."""
  return jax.random.fold_in(rng, step)


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               aug_cfg: augment.AugmentConfig, method_cfg: bank_method.BankMethodConfig,
               axis_name: Optional[str] = devices.AXIS) -> tuple[TrainState, dict]:
  """One optimizer step and one bank transition; pure in (state, batch).

  Args:
    state: this replica's TrainState (all replicas hold the same values).
    batch: {'image': uint8 [b, H, W, 3] (or float32 views already augmented on
      the host), 'index': int32 [b]}.

  Returns:
    (new state, metrics) with metrics as global (sum, count) pairs.
  """
  idx = batch["index"]
  images = batch["image"]
  if images.dtype == jnp.uint8:
    images = augment.augment_batch(step_key(state.rng, state.step), images, idx, aug_cfg)

  if method_cfg.sharded:
    objective = lambda z, bank: sharded_bank.loss_and_transition(
        z, bank, idx, method_cfg, num_examples=method_cfg.num_examples, axis_name=axis_name)
    return _cotangent_step(state, images, idx, objective, model=model, tx=tx,
                           axis_name=axis_name)
  if method_cfg.fused:
    objective = lambda z, bank: bank_method.fused_loss_and_transition(
        z, bank, idx, method_cfg, axis_name)
    return _cotangent_step(state, images, idx, objective, model=model, tx=tx,
                           axis_name=axis_name)

  def loss_fn(params):
    (_, z), updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  images, train=True, mutable=["batch_stats"])
    s = losses.bank_logits(z, state.bank, method_cfg.temperature)
    loss, (ce, skl) = bank_method.loss_from_logits(s, idx, method_cfg)
    return loss, (updates["batch_stats"], z, s, ce, skl)

  (loss, (batch_stats, z, s, ce, skl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  if axis_name is not None:
    # Every replica's loss is the mean over its own b examples; equal b on all
    # replicas makes the mean of gradients the gradient of the global mean.
    grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_bank = bank_method.bank_transition(state.bank, z, s, idx, method_cfg, axis_name)

  pos_prob = jnp.mean(jnp.exp(jnp.take_along_axis(jax.nn.log_softmax(s), idx[:, None], axis=1)))
  sums = _metric_sums(state, {"loss": loss, "ce": ce, "sqrt_kl": skl, "pos_prob": pos_prob},
                      idx.shape[0], grads, new_bank, axis_name)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, bank=new_bank)
  return new_state, sums


def make_indexed_step(step_fn, steps_per_epoch: int):
  """A step that reads its batch from device-resident data (config.data.on_device).

  The returned `(state, table, images) -> (state, sums)` takes this device's
  index table of the epoch, {'index': int32 [steps_per_epoch, b] global
  instance indices (`data.epoch_indices`), 'row': int32 [steps_per_epoch, b]
  their rows in `images`}, and this process's rows of the split, uint8
  [n, H, W, 3]. Step t of the epoch gathers rows table['row'][t] on the
  device, so the same batches as the streaming pipeline reach `step_fn`.
  (Rows come in the table, not as a constant offset, so every process runs
  the same program.)
  """
  def indexed_step(state: TrainState, table: dict, images: jax.Array):
    t = state.step % steps_per_epoch
    idx, rows = (jax.lax.dynamic_index_in_dim(table[k], t, keepdims=False)
                 for k in ("index", "row"))
    return step_fn(state, {"image": jnp.take(images, rows, axis=0), "index": idx})
  return indexed_step


# data.on_device may take at most this share of a device's memory: the rest is
# for parameters, bank, optimizer state and activations.
RESIDENT_SHARE = 0.5


def resident_rows(layout: data_lib.Layout) -> int:
  """Rows of the split `resident_split` puts on each device: the largest process's share."""
  return max(hi - lo for lo, hi in map(layout.process_bounds, range(layout.process_count)))


def resident_bytes(train: data_lib.Split) -> int:
  """Bytes of training images `resident_split` puts on each device."""
  return resident_rows(train.layout) * train.images[:1].nbytes


def check_resident_fits(train: data_lib.Split) -> None:
  """Refuses data.on_device before anything is compiled if the split would crowd out the run."""
  limit, need = devices.memory_limit_bytes(), resident_bytes(train)
  if limit is not None and need > RESIDENT_SHARE * limit:
    raise ConfigError(
        f"config.data.on_device=True would keep {need / 2**20:,.1f} MiB of training images on "
        f"each device, more than {RESIDENT_SHARE:.0%} of its {limit / 2**20:,.1f} MiB; leave it "
        f"False (the streaming pipeline) or lower config.data.image_size.")


def resident_split(train: data_lib.Split) -> jax.Array:
  """This process's training rows on each of its devices: uint8 [D, n, H, W, 3].

  Processes hold different row counts (shards differ by up to one row), but
  a pmapped input has one shape on every device of every process, so each
  pads to the largest share; the padding is never indexed.
  """
  images = np.zeros((resident_rows(train.layout), *train.images.shape[1:]), train.images.dtype)
  images[:len(train)] = train.images
  return devices.replicate(images)


def _cotangent_step(state: TrainState, images: jax.Array, idx: jax.Array, objective, *,
                    model, tx, axis_name: Optional[str]) -> tuple[TrainState, dict]:
  """`train_step` for an objective that returns its own gradient in z.

  `objective(z, bank) -> (metric means, dz, new bank)` is the fused pass
  (`bank_method.fused_loss_and_transition`, bank replicated) or the sharded
  one (`sharded_bank.loss_and_transition`, `state.bank` this device's rows).
  The encoder's gradient comes from `jax.vjp` with that cotangent, so neither
  the loss nor any collective is differentiated.
  """
  def forward(params):
    (_, z), updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  images, train=True, mutable=["batch_stats"])
    return z, updates["batch_stats"]

  z, vjp_fn, batch_stats = jax.vjp(forward, state.params, has_aux=True)
  means, dz, new_bank = objective(z, state.bank)
  (grads,) = vjp_fn(dz.astype(z.dtype))
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  sums = _metric_sums(state, means, idx.shape[0], grads, new_bank, axis_name)
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state, bank=new_bank), sums


def _metric_sums(state: TrainState, means: dict, batch: int, grads, bank: jax.Array,
                 axis_name: Optional[str]) -> dict:
  """Per-replica means -> global (sum, count) pairs, plus the divergence flags."""
  b = jnp.asarray(batch, jnp.float32)
  sums = {k: v * b for k, v in means.items()}
  sums["count"] = b
  finite = jnp.isfinite(means["loss"]) & jnp.all(jnp.isfinite(bank))
  for g in jax.tree_util.tree_leaves(grads):
    finite &= jnp.all(jnp.isfinite(g))
  sums["nonfinite"] = 1.0 - finite.astype(jnp.float32)
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  # The 1-based number of this step if anything in it was not finite, else a
  # sentinel; `accumulate_metrics` keeps the minimum over a logging interval.
  sums["first_bad_step"] = jnp.where(sums["nonfinite"] > 0, state.step + 1, _NO_BAD_STEP)
  return sums


def two_view_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
                  aug_cfg: augment.AugmentConfig, method: str, temperature: float,
                  total_steps: int, target_decay: float,
                  axis_name: Optional[str] = devices.AXIS) -> tuple[TrainState, dict]:
  """One step of a two-view baseline (SimCLR or BYOL); same contract as `train_step`.

  Both views of the b images go through the encoder as one [2b] batch, so
  BatchNorm sees both (and, with sync BN, the global batch of views).
  """
  idx = batch["index"]
  key = step_key(state.rng, state.step)
  if "views" in batch:
    # Two float views [2, b, S, S, 3] made elsewhere (benchmarks time the step without
    # its augmentation this way).
    views = [batch["views"][0], batch["views"][1]]
  else:
    views = [augment.augment_batch(jax.random.fold_in(key, v), batch["image"], idx, aug_cfg)
             for v in (0, 1)]
  x = jnp.concatenate(views)
  b = idx.shape[0]

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    if method == "simclr":
      (_, z), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
      loss = simclr.nt_xent(z[:b], z[b:], temperature, axis_name)
    else:
      (_, _, p), updates = model.apply(variables, x, train=True, with_prediction=True,
                                       mutable=["batch_stats"])
      # The target normalises with its own batch statistics; its running
      # statistics follow the online network's by EMA below.
      (_, t), _ = model.apply(state.extra, x, train=True, mutable=["batch_stats"])
      loss = byol.byol_loss(p[:b], p[b:], t[:b], t[b:])
    return loss, updates["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  extra = state.extra
  if method == "byol":
    decay = byol.target_decay(state.step, total_steps, target_decay)
    extra = byol.ema(extra, {"params": params, "batch_stats": batch_stats}, decay)
  sums = _metric_sums(state, {"loss": loss}, b, grads, state.bank, axis_name)
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state, extra=extra), sums


_NO_BAD_STEP = np.iinfo(np.int32).max


@jax.jit
def accumulate_metrics(acc: dict, sums: dict) -> dict:
  """Adds one step's metric sums to the running ones, on device (no host round trip)."""
  out = jax.tree_util.tree_map(jnp.add, acc, sums)
  out["first_bad_step"] = jnp.minimum(acc["first_bad_step"], sums["first_bad_step"])
  return out


def reduce_metrics(sums: dict) -> dict:
  """Global means from psum'd (sum, count) pairs (replica 0's copy) of one or more steps."""
  sums = devices.unreplicate(sums)  # host NumPy already
  n = float(sums["count"])
  bad = int(sums["first_bad_step"])
  means = {k: float(v) / n for k, v in sums.items()
           if k not in ("count", "nonfinite", "first_bad_step")}
  return {**means, "nonfinite": float(sums["nonfinite"]),
          "first_bad_step": None if bad == _NO_BAD_STEP else bad}


# ----------------------------------------------------------------------------
# Building a run from a config.
# ----------------------------------------------------------------------------

def augment_config(config) -> augment.AugmentConfig:
  a = config.augment
  return augment.AugmentConfig(
      out_size=int(config.data.image_size), mean=tuple(config.data.mean),
      std=tuple(config.data.std), crop_scale=tuple(a.crop_scale), flip=bool(a.flip),
      jitter=tuple(a.jitter), jitter_prob=float(a.jitter_prob), gray_prob=float(a.gray_prob),
      blur_prob=float(a.blur_prob))


def build_model(config, bn_axis_name: Optional[str] = devices.AXIS):
  m = config.model
  return models.create_encoder(
      m.name, stem=m.stem, width=m.width, embed_dim=m.embed_dim, dtype=m.dtype,
      bn_axis_name=bn_axis_name, head=m.head, head_hidden=m.head_hidden,
      # BYOL regresses raw projections through its predictor; the others use unit z.
      normalize=config.method != "byol",
      predictor_hidden=m.head_hidden if config.method == "byol" else 0)


def make_train_step(config, model, tx, total_steps: int, num_examples: int = 0):
  """The method's pure step `(state, batch) -> (state, metric sums)`, ready to pmap.

  num_examples (N) is needed with config.bank.sharded only.
  """
  aug_cfg = augment_config(config)
  if config.method in BANK_METHODS:
    return functools.partial(train_step, model=model, tx=tx, aug_cfg=aug_cfg,
                             method_cfg=bank_method.BankMethodConfig.from_config(
                                 config, num_examples))
  return functools.partial(two_view_step, model=model, tx=tx, aug_cfg=aug_cfg,
                           method=config.method, temperature=float(config.simclr.temperature),
                           total_steps=total_steps,
                           target_decay=float(config.byol.target_decay))


def load_data(config, log=print) -> tuple[data_lib.Split, data_lib.Split, int]:
  """This process's rows of the (train, test) subsets, and the count of skipped files."""
  kw = dict(seed=config.data.subset_seed, num_shards=num_shards(config),
            process_index=jax.process_index(), process_count=jax.process_count(), log=log)
  train, skipped = data_lib.load_shard(config.data, config.data.train_split,
                                       fraction=config.data.fraction, **kw)
  test, skipped_test = data_lib.load_shard(config.data, config.data.test_split,
                                           fraction=config.data.test_fraction, **kw)
  return train, test, skipped + skipped_test


def count_classes(train: data_lib.Split, test: data_lib.Split) -> int:
  """Classes over both splits and every process."""
  if train.class_names:
    return len(train.class_names)
  local = np.asarray([max(train.labels.max(), test.labels.max())], np.int32)
  return int(devices.gather_processes(local, [1] * jax.process_count()).max() + 1)


def initial_state(config, model, tx, num_examples: int) -> TrainState:
  """Fresh encoder and optimizer state around an all-zero [N, d] bank (see `init_bank`).

  Methods without a bank carry an unused [1, d] placeholder (orbax cannot
  save empty arrays); BYOL's target starts as a copy of the online network.
  """
  size = int(config.data.image_size)
  rows = num_examples if config.method in BANK_METHODS else 1
  bank = jnp.zeros((rows, int(config.model.embed_dim)), jnp.float32)
  state = create_train_state(model, tx, jax.random.PRNGKey(config.seed), (size, size, 3), bank)
  if config.method == "byol":
    state = state.replace(extra=_variables(state))
  return state


def init_bank(config, state: TrainState, train: data_lib.Split, log=print) -> TrainState:
  """The bank of `config.bank.init`: random rows, or one pass of the untrained network."""
  n, d = state.bank.shape
  if config.method not in BANK_METHODS:
    return state
  if config.bank.init == "random":
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    return state.replace(bank=bank_lib.random_bank(key, n, d))
  log(f"calibrating the bank: one forward pass of the untrained network over {n} images "
      f"(BatchNorm in {config.bank.calibrate_bn} mode)")
  # Every process embeds its own rows; the gathered z is the whole bank, in
  # instance order, on every process.
  p_embed = evaluate.make_embed_fn(build_model(config), augment_config(config),
                                   batch_norm=config.bank.calibrate_bn)
  _, z = evaluate.extract_features(p_embed, devices.replicate(_variables(state)), train,
                                   batch_size=config.eval.batch_size,
                                   num_devices=jax.local_device_count(), desc="calibrating")
  return state.replace(bank=bank_lib.normalize_rows(jnp.asarray(z, jnp.float32)))


def run_evaluation(config, model_eval_fn, state_variables, train, test, num_classes, *,
                   linear: bool) -> dict:
  """Features of both splits with the current network, then kNN (and linear probe)."""
  nd = jax.local_device_count()
  bs = config.eval.batch_size
  train_h, train_z = evaluate.extract_features(model_eval_fn, state_variables, train,
                                               batch_size=bs, num_devices=nd,
                                               desc="embedding the train split")
  test_h, test_z = evaluate.extract_features(model_eval_fn, state_variables, test,
                                             batch_size=bs, num_devices=nd,
                                             desc="embedding the test split")
  # Features (gathered above) and labels from every process: the kNN bank and
  # the probe's training set are the whole training subset everywhere.
  return evaluate.evaluate_features(train_h, train_z, evaluate.gather_labels(train),
                                    test_h, test_z, evaluate.gather_labels(test),
                                    config.eval, num_classes, linear=linear)


def is_sharded(config) -> bool:
  return config.method in BANK_METHODS and bool(config.bank.get("sharded", False))


def place_state(config, state: TrainState) -> TrainState:
  """Host state (full [N, d] bank) -> per-device state [D, ...].

  Everything is replicated, except a sharded bank: device k gets rows
  [k n, (k + 1) n) (ssl_jax.sharded_bank).
  """
  if not is_sharded(config):
    return devices.replicate(state)
  bank = np.asarray(jax.device_get(state.bank))
  placed = devices.replicate(state.replace(bank=bank[:1]))
  return placed.replace(bank=devices.distribute(
      sharded_bank.split_bank(bank, jax.device_count())))


def host_state(config, state: TrainState, num_examples: int) -> TrainState:
  """Per-device state -> one host copy with the full [N, d] bank (for checkpoints).

  A sharded bank is gathered from every device of every process, so its
  checkpoints are the same as an unsharded run's (either can resume the other).
  """
  host = devices.unreplicate(state)
  if is_sharded(config):
    host = host.replace(bank=sharded_bank.join_bank(devices.all_rows(state.bank), num_examples))
  return host


def check_replicas(state: TrainState, include_bank: bool = True) -> bool:
  """Whether every replica, in every process, holds bit-identical params, stats and bank.

  Compares a digest of each local replica, then the digests of all processes.
  A sharded bank (different rows per device) is left out.
  """
  import hashlib
  from jax.experimental import multihost_utils

  def digest(tree) -> int:
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
      h.update(np.ascontiguousarray(leaf).tobytes())
    return int.from_bytes(h.digest()[:4], "little")

  tree = (state.params, state.batch_stats, state.bank if include_bank else None)
  rows = jax.tree_util.tree_map(devices.local_rows, tree)
  local = {digest(jax.tree_util.tree_map(lambda x: x[r], rows))
           for r in range(jax.local_device_count())}
  if len(local) > 1:
    return False
  mine = np.asarray([local.pop()], np.uint32)
  everyone = (multihost_utils.process_allgather(mine) if jax.process_count() > 1 else mine)
  return bool(np.all(np.asarray(everyone) == mine[0]))


def make_host_augment(aug_cfg: augment.AugmentConfig, rng: np.ndarray):
  """The host-side alternative (config.augment.on_device=False), for comparison.

  Runs the same augmentation, with the same keys, jitted on the host CPU
  before the batch is sent to the accelerators; the step then skips its own.
  """
  cpu = jax.local_devices(backend="cpu")[0]
  rng = jax.device_put(rng, cpu)
  fn = jax.jit(augment.augment_batch, static_argnums=3)

  def apply(batch: dict, step: int) -> dict:
    images, idx = batch["image"], batch["index"]
    flat = jax.device_put((images.reshape(-1, *images.shape[2:]), idx.reshape(-1)), cpu)
    views = fn(step_key(rng, step), *flat, aug_cfg)
    return {"image": np.asarray(views).reshape(*idx.shape, *views.shape[1:]), "index": idx}
  return apply


def peak_memory_bytes() -> Optional[int]:
  """Peak bytes in use on the first local device, or None where the backend does not say."""
  return devices.memory_stat("peak_bytes_in_use")


def _variables(state: TrainState) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


# ----------------------------------------------------------------------------
# The shell: the epoch loop with checkpoints, logging and evaluation.
# ----------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per `config`, resuming from `workdir` if it holds a checkpoint.

  Writes config.json, run_info.json, init_eval.json, metrics.jsonl,
  tensorboard/, checkpoints/, epoch_timing.json (mid-epoch checkpoints
  only) and summary.json to `workdir`; returns the
  summary. Raises ConfigError or DataError (before compiling anything),
  FloatingPointError on divergence (the last good checkpoint kept) and
  preemption.Preempted after SIGTERM (a checkpoint written).
  """
  t_start = time.time()
  nd = jax.local_device_count()
  validate_config(config, nd)
  is_main = jax.process_index() == 0
  log = print if is_main else (lambda *a, **k: None)
  os.makedirs(workdir, exist_ok=True)
  log(f"ssl_jax: method {config.method}, {config.model.name} (width {config.model.width}, "
      f"{config.model.stem} stem), {nd} {jax.devices()[0].platform} device(s)")
  log(f"data source: {config.data.source}"
      + (f" ({config.data.source_reason})" if config.data.get("source_reason") else ""))
  if note := bank_lr_note(config):
    log(note)

  train, test, skipped = load_data(config, log)
  num_classes = count_classes(train, test)
  global_batch = int(config.batch_size)
  shards = num_shards(config)
  steps_per_epoch = data_lib.steps_per_epoch(train.num_examples, global_batch, shards)
  if steps_per_epoch < 1:
    raise ConfigError(f"config.batch_size ({global_batch}) is larger than the training set "
                      f"({train.num_examples} images after config.data.fraction="
                      f"{config.data.fraction}, in {shards} shard(s)).")
  run_files.check_resumable(workdir, config, train.num_examples)
  if config.data.get("on_device", False):
    check_resident_fits(train)
  total_steps = steps_per_epoch * config.num_epochs
  log(f"{train.num_examples} training images ({num_classes} classes), "
      f"{test.num_examples} test images; batch {global_batch}, {steps_per_epoch} steps/epoch, "
      f"{config.num_epochs} epochs"
      + (f"; {jax.process_count()} processes, {shards} data shards"
         if jax.process_count() > 1 or shards > 1 else ""))

  model = build_model(config)
  schedule = optim.learning_rate_schedule(config.optim, global_batch, steps_per_epoch,
                                          config.num_epochs)
  tx = optim.create_optimizer(config.optim, schedule)
  aug_cfg = augment_config(config)
  p_eval = evaluate.make_embed_fn(model, aug_cfg)

  manager = checkpoint.create_manager(workdir, config.keep_checkpoints)
  fresh = initial_state(config, model, tx, train.num_examples)
  state = checkpoint.restore_latest(manager, fresh, log)
  init_eval_path = os.path.join(workdir, "init_eval.json")
  if state is None or not os.path.exists(init_eval_path):
    state = init_bank(config, fresh, train, log)
    log("evaluating the untrained network (kNN)...")
    init_eval = run_evaluation(config, p_eval, devices.replicate(_variables(state)), train,
                               test, num_classes, linear=False)
    log(f"untrained network: kNN top-1 {init_eval['knn_top1']:.4f} "
        f"(embedding {init_eval['knn_top1_embedding']:.4f})")
    if is_main:
      run_files.write_json_atomic(init_eval_path, init_eval)
      # Resets the log of an earlier attempt that died before its first checkpoint.
      run_files.truncate_metrics(workdir, 0)
    history = []
    carried = (0.0, 0)
  else:
    log(f"resuming from checkpoint at step {int(state.step)} "
        f"(epoch {int(state.step) // steps_per_epoch})")
    with open(init_eval_path) as f:
      init_eval = json.load(f)
    history = [r for r in run_files.truncate_metrics(workdir, int(state.step))
               if "epoch_seconds" in r]
    carried = run_files.carried_epoch_time(workdir, int(state.step), steps_per_epoch)
  if is_main:
    run_files.write_config(workdir, config)
    run_files.write_run_info(workdir, config, train.num_examples)

  step_fn = make_train_step(config, model, tx, total_steps, train.num_examples)
  resident = None
  if config.data.get("on_device", False):
    # The split lives on every device; each step gathers its batch there.
    p_train_step = jax.pmap(make_indexed_step(step_fn, steps_per_epoch),
                            axis_name=devices.AXIS, donate_argnums=(0,))
    resident = resident_split(train)
  else:
    p_train_step = jax.pmap(step_fn, axis_name=devices.AXIS, donate_argnums=(0,))
  state = place_state(config, state)
  step = int(devices.unreplicate(state.step))
  host_augment = None if config.augment.on_device else make_host_augment(
      aug_cfg, devices.unreplicate(state.rng))
  writer = reporting.MetricWriter(workdir, enabled=is_main)
  acc = None  # metric sums since the last fetch, kept on device

  def fetch_metrics() -> Optional[dict]:
    """Brings the accumulated metrics to the host; stops the run if any step diverged."""
    nonlocal acc
    if acc is None:
      return None
    m, acc = reduce_metrics(acc), None
    if m["first_bad_step"] is not None:
      raise FloatingPointError(
          f"non-finite loss, gradient or bank at step {m['first_bad_step']}; stopped without "
          f"saving it. The last good checkpoint is kept: step {manager.latest_step()} in "
          f"{manager.directory}. Lower optim.base_lr or bank.lr and rerun to resume from it.")
    del m["first_bad_step"], m["nonfinite"]
    return m

  def save_checkpoint() -> None:
    fetch_and_log()
    saved = host_state(config, state, train.num_examples)
    if step % steps_per_epoch and is_main:
      # host_state waited for the step, so this is the epoch's time so far.
      run_files.record_epoch_time(workdir, step,
                                  carried[0] + time.perf_counter() - t_epoch,
                                  carried[1] + step - epoch * steps_per_epoch - start)
    checkpoint.save(manager, saved)

  def preempt() -> None:
    if manager.latest_step() != step:
      save_checkpoint()
    manager.wait_until_finished()
    raise preemption.Preempted(
        f"received SIGTERM: checkpoint saved at step {step} in {manager.directory}. "
        f"Rerun the same command to resume.")

  def fetch_and_log() -> None:
    m = fetch_metrics()
    if m is not None:
      m["lr"] = float(schedule(step - 1))
      writer.write(step, m, epoch=(step - 1) // steps_per_epoch + 1)
      progress.update(step - epoch * steps_per_epoch - start, {"loss": m["loss"]})

  first_epoch = step // steps_per_epoch  # this process's: it pays for compilation
  try:
    with preemption.StopRequest() as stop:
      while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        if resident is not None:
          # One transfer of the epoch's indices [D, steps, b]; no per-step host work.
          ids = np.swapaxes(data_lib.epoch_indices(
              train.layout, global_batch=global_batch, num_local_devices=nd, seed=config.seed,
              epoch=epoch), 0, 1)
          table = devices.place({"index": ids, "row": ids - np.int32(train.offset)})
          inputs = ((table, resident) for _ in range(start, steps_per_epoch))
        else:
          batches = data_lib.train_batches(
              train, global_batch=global_batch, num_local_devices=nd, seed=config.seed,
              epoch=epoch, start_step=start)
          batches = ({"image": b["image"], "index": b["index"]} for b in batches)
          if host_augment is not None:
            batches = (host_augment(b, s) for s, b in enumerate(batches, step))
          inputs = ((b,) for b in devices.prefetch(batches, 2))
        progress = reporting.Progress(steps_per_epoch - start,
                                      f"epoch {epoch + 1}/{config.num_epochs}", global_batch,
                                      enabled=is_main)
        t_epoch = time.perf_counter()
        for args in inputs:
          state, sums = p_train_step(state, *args)
          acc = sums if acc is None else accumulate_metrics(acc, sums)
          step += 1
          # At an epoch's last step the epoch-end work (record, kNN, save)
          # runs first, so a resumed run's log matches an uninterrupted one.
          if stop.requested and step % steps_per_epoch:
            preempt()
          if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
            save_checkpoint()
          elif step % config.log_every_steps == 0:
            fetch_and_log()
        fetch_and_log()
        jax.block_until_ready(state.step)
        dt = carried[0] + time.perf_counter() - t_epoch
        timed_steps = carried[1] + steps_per_epoch - start
        epoch_done = step // steps_per_epoch
        # The first epoch of every process (a resumed run has several) pays
        # for compilation; seconds_per_epoch leaves those out.
        record = {"epoch_seconds": dt, "epoch_steps": timed_steps,
                  "images_per_second": timed_steps * global_batch / dt}
        includes_compile, carried = epoch == first_epoch, (0.0, 0)
        if (config.eval.every_epochs and epoch_done % config.eval.every_epochs == 0
            and epoch_done < config.num_epochs):
          knn = run_evaluation(config, p_eval, _variables(state), train, test, num_classes,
                               linear=False)
          record.update(knn)
          log(f"epoch {epoch_done}: kNN top-1 {knn['knn_top1']:.4f}")
        writer.write(step, record, epoch=epoch_done, includes_compile=includes_compile)
        history.append({"step": step, "epoch": epoch_done,
                        "includes_compile": includes_compile, **record})
        if epoch_done % config.checkpoint_every_epochs == 0 or step >= total_steps:
          save_checkpoint()
        if stop.requested:
          preempt()
  finally:
    # Lets a pending asynchronous save finish, whatever stopped the loop.
    manager.wait_until_finished()
    writer.close()

  replicas_identical = check_replicas(state, include_bank=not is_sharded(config))
  log("final evaluation (kNN and linear probe)...")
  final = run_evaluation(config, p_eval, _variables(state), train, test, num_classes, linear=True)
  # Seconds per step without compilation: the first epoch of each process pays
  # for it, so it is left out where a full later epoch exists. (Records from
  # before includes_compile existed: the first one compiled.)
  timed = [r for i, r in enumerate(history) if r["epoch_steps"] == steps_per_epoch
           and not r.get("includes_compile", i == 0)] or history
  sec_per_step = (sum(r["epoch_seconds"] for r in timed)
                  / max(sum(r["epoch_steps"] for r in timed), 1))
  summary = {
      "method": config.method,
      "dataset": config.data.source,
      "num_train_examples": train.num_examples,
      "num_test_examples": test.num_examples,
      "epochs": config.num_epochs,
      "devices": jax.device_count(),
      "platform": jax.devices()[0].platform,
      "knn_top1_init": init_eval["knn_top1"],
      "knn_top1_embedding_init": init_eval["knn_top1_embedding"],
      **final,
      "seconds_per_epoch": sec_per_step * steps_per_epoch,
      "images_per_second": global_batch / sec_per_step if sec_per_step else None,
      "peak_memory_bytes": peak_memory_bytes(),
      "skipped_files": skipped,
      "processes": jax.process_count(),
      "replicas_identical": replicas_identical,
      # Every step once, over all processes of a resumed run (epoch records
      # carry an interrupted epoch's seconds), compilation included.
      "train_seconds": sum(r["epoch_seconds"] for r in history),
      "wall_seconds": time.time() - t_start,
      "history": history,
  }
  if is_main:
    run_files.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    log(f"kNN top-1: untrained {summary['knn_top1_init']:.4f} -> trained "
        f"{summary['knn_top1']:.4f}; linear top-1 {summary['linear_top1']:.4f} "
        f"({summary['wall_seconds']:.0f} s, summary in {workdir}/summary.json)")
  return summary


def evaluate_checkpoint(workdir: str) -> dict:
  """kNN and linear top-1 of the latest checkpoint in `workdir`."""
  config = run_files.load_run_config(workdir)
  train, test, _ = load_data(config)
  num_classes = count_classes(train, test)
  model = build_model(config)
  steps_per_epoch = data_lib.steps_per_epoch(train.num_examples, config.batch_size,
                                             num_shards(config))
  tx = optim.create_optimizer(config.optim, optim.learning_rate_schedule(
      config.optim, config.batch_size, steps_per_epoch, config.num_epochs))
  template = initial_state(config, model, tx, train.num_examples)
  state = checkpoint.restore_latest(checkpoint.create_manager(workdir), template)
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints.")
  p_eval = evaluate.make_embed_fn(model, augment_config(config))
  result = run_evaluation(config, p_eval, devices.replicate(_variables(state)), train, test,
                          num_classes, linear=True)
  return {"step": int(state.step), "epoch": int(state.step) / max(steps_per_epoch, 1), **result}
