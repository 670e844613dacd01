"""From a config to the objects a run is made of: data, model, step, state, placement.

Nothing here loops over epochs or writes files; `ssl_jax.train` (the loop)
and the command lines call these. Method-specific choices come from the
method's registry entry (`ssl_jax.methods`), never from its name.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import augment
from ssl_jax import bank as bank_lib
from ssl_jax import data as data_lib
from ssl_jax import devices
from ssl_jax import mapping
from ssl_jax import evaluate
from ssl_jax import methods
from ssl_jax import models
from ssl_jax import optim
from ssl_jax import sharded_bank
from ssl_jax import steps
from ssl_jax.evaluate import freshness
from ssl_jax.run_config import num_shards
from ssl_jax.state import TrainState, create_train_state


def augment_config(config) -> augment.AugmentConfig:
  a = config.augment
  return augment.AugmentConfig(
      out_size=int(config.data.image_size), mean=tuple(config.data.mean),
      std=tuple(config.data.std), crop_scale=tuple(a.crop_scale), flip=bool(a.flip),
      jitter=tuple(a.jitter), jitter_prob=float(a.jitter_prob), gray_prob=float(a.gray_prob),
      blur_prob=float(a.blur_prob), crop=not config.data.get("stream", False))


def build_model(config, bn_axis_name: Optional[str] = devices.AXIS):
  """The encoder of `config.model`, with the heads its method asks for."""
  m = config.model
  return models.create_encoder(
      m.name, stem=m.stem, width=m.width, embed_dim=m.embed_dim, dtype=m.dtype,
      bn_axis_name=bn_axis_name, head=m.head, head_hidden=m.head_hidden,
      patch_size=models.field(m, "patch_size"), pool=models.field(m, "pool"),
      **methods.get(config.method).model_options(config))


def build_optimizer(config, steps_per_epoch: int):
  """(learning-rate schedule, optax optimizer) of `config.optim` over the run."""
  schedule = optim.learning_rate_schedule(config.optim, int(config.batch_size), steps_per_epoch,
                                          config.num_epochs)
  return schedule, optim.create_optimizer(config.optim, schedule)


def make_train_step(config, model, tx, total_steps: int, num_examples: int = 0,
                    axis_name: Optional[str] = devices.AXIS, labels=None) -> steps.StepFn:
  """The method's pure step `(state, batch) -> (state, metric sums)`, ready to pmap.

  num_examples (N) is needed by methods with a bank (the sharded bank's rows),
  labels (int [N] by instance index) by methods that train on them.
  """
  ctx = steps.StepContext(config=config, model=model, tx=tx, aug_cfg=augment_config(config),
                          total_steps=total_steps, num_examples=num_examples,
                          axis_name=axis_name, labels=labels)
  step = methods.get(config.method).make_step(ctx)
  size = int(config.data.image_size)

  def step_fn(state, batch):
    if "box" in batch:  # the streamed windows of decoder "simplejpeg": resized here
      batch = dict(batch)
      with jax.named_scope("resize_windows"):
        batch["image"] = augment.resize_windows(batch["image"], batch.pop("box"), size)
    return step(state, batch)
  return step_fn


def load_data(config, log=print, workdir: str = "") -> tuple[data_lib.Split, data_lib.Split, int]:
  """This process's rows of the (train, test) subsets, and the count of skipped files.

  A streamed `tfds:` split caches its labels beside the data, else in `workdir`.
  """
  kw = dict(seed=config.data.subset_seed, num_shards=num_shards(config),
            process_index=jax.process_index(), process_count=jax.process_count(), log=log)
  if config.data.get("stream", False):
    from ssl_jax import stream  # Grain: imported only for streaming runs
    return (stream.load_split(config.data, config.data.train_split,
                              fraction=config.data.fraction, cache_dir=workdir, **kw),
            stream.load_split(config.data, config.data.test_split,
                              fraction=config.data.test_fraction, cache_dir=workdir, **kw), 0)
  train, skipped = data_lib.load_shard(config.data, config.data.train_split,
                                       fraction=config.data.fraction, **kw)
  train = data_lib.label_subset(train, float(config.data.get("label_fraction", 1.0)), config.seed)
  test, skipped_test = data_lib.load_shard(config.data, config.data.test_split,
                                           fraction=config.data.test_fraction, **kw)
  return train, test, skipped + skipped_test


def count_classes(train: data_lib.Split, test: data_lib.Split) -> int:
  """Classes over both splits and every process."""
  if train.class_names:
    return len(train.class_names)
  local = np.asarray([max(train.labels.max(), test.labels.max())], np.int32)
  return int(devices.gather_processes(local, [1] * jax.process_count()).max() + 1)


def label_notes(train: data_lib.Split, test: data_lib.Split) -> list[str]:
  """One-line notes where the labels make kNN and the linear probe say little.

  Training is self-supervised and goes on; only the label-based evaluation
  is affected: a training split of one class makes every prediction right,
  and test classes absent from training can never be predicted.
  """
  train_classes = set(np.unique(evaluate.gather_labels(train)).tolist())
  test_classes = set(np.unique(evaluate.gather_labels(test)).tolist())
  name = lambda c: train.class_names[c] if c < len(train.class_names) else str(c)
  notes = []
  if len(train_classes) == 1:
    notes.append(f"note: the training split has one class ({name(min(train_classes))}): "
                 "kNN and the linear probe cannot mean much (training goes on).")
  if missing := sorted(test_classes - train_classes):
    shown = ", ".join(map(name, missing[:5])) + (" ..." if len(missing) > 5 else "")
    notes.append(f"note: {len(missing)} test class(es) never appear in training ({shown}): "
                 "kNN and the linear probe cannot predict them (training goes on).")
  return notes


def initial_state(config, model, tx, num_examples: int) -> TrainState:
  """Fresh encoder and optimizer state around an all-zero [N, d] bank (see `init_bank`).

  Methods without a bank carry an unused [1, d] placeholder (orbax cannot
  save empty arrays); the method's own state comes from its `init_extra`.
  """
  method = methods.get(config.method)
  size = int(config.data.image_size)
  rows = num_examples if method.uses_bank else 1
  bank = jnp.zeros((rows, int(config.model.embed_dim)), bank_dtype(config))
  state = create_train_state(model, tx, jax.random.PRNGKey(config.seed), (size, size, 3), bank)
  return state.replace(extra=method.init_extra(state))


def abstract_state(config, model, tx, num_examples: int) -> TrainState:
  """`initial_state`'s shapes and dtypes (jax.ShapeDtypeStruct leaves), computing
  nothing: the structure a checkpoint is restored into."""
  return jax.eval_shape(lambda: initial_state(config, model, tx, num_examples))


def bank_dtype(config) -> jnp.dtype:
  """The bank's storage dtype (`config.bank.dtype`); float32 for a method's placeholder."""
  if not methods.get(config.method).uses_bank:
    return jnp.dtype(jnp.float32)
  return jnp.dtype(config.bank.get("dtype", "float32"))


def init_bank(config, state: TrainState, train: data_lib.Split, log=print) -> TrainState:
  """The bank of `config.bank.init`: random rows, or one pass of the untrained network.

  Rows are computed in float32 and stored as `config.bank.dtype`.
  """
  n, d = state.bank.shape
  if not methods.get(config.method).uses_bank:
    return state
  if config.bank.init == "random":
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    return state.replace(bank=bank_lib.random_bank(key, n, d, dtype=bank_dtype(config)))
  # bank.calibrate_bn matters only where the encoder has BatchNorm (not a ViT with
  # a linear head, say).
  mode = f" (BatchNorm in {config.bank.calibrate_bn} mode)" if state.batch_stats else ""
  log(f"calibrating the bank: one forward pass of the untrained network over {n} images{mode}")
  # Every process embeds its own rows, keeping only the d-dim z (not the
  # backbone's features); gathered, they are the whole bank, in instance
  # order, on every process.
  p_embed = evaluate.make_embed_fn(build_model(config), augment_config(config),
                                   batch_norm=config.bank.calibrate_bn)
  z, = evaluate.extract_features(p_embed, devices.replicate(steps.variables(state)), train,
                                 batch_size=config.eval.batch_size,
                                 num_devices=jax.local_device_count(), desc="calibrating",
                                 keep=("z",))
  bank = evaluate.gather_rows(z, train)
  return state.replace(bank=bank_lib.normalize_rows(jnp.asarray(bank, jnp.float32))
                       .astype(bank_dtype(config)))


def is_sharded(config) -> bool:
  return methods.get(config.method).uses_bank and bool(config.bank.get("sharded", False))


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
    host = host.replace(bank=bank_of(config, state, num_examples))
  return host


def saved_state(config, state: TrainState, num_examples: int) -> TrainState:
  """What a checkpoint saves of the step's [D, ...] state, waited for.

  A mesh run's global state -> its saved form on the devices
  (`mapping.to_saved`: each process then writes only the bank rows it
  holds); a pmap run's -> one host copy (`host_state`).
  """
  if mapping.is_global(state.step):
    saved = mapping.to_saved(state, is_sharded(config))
  else:
    saved = host_state(config, state, num_examples)
  return jax.block_until_ready(saved)


def restore_target(config, abstract: TrainState) -> TrainState:
  """What a checkpoint is restored into (`checkpoint.restore_latest`): shapes with
  the saved form's shardings for the mesh mapping (`mapping.saved_template`),
  the shapes alone (host NumPy) for pmap."""
  if config.get("parallel", "pmap") == "mesh":
    return mapping.saved_template(abstract, is_sharded(config))
  return abstract


def step_state(config, state: TrainState) -> TrainState:
  """A fresh or restored state -> the step's [D, ...] layout for `config.parallel`:
  a mesh run's restored saved form through `mapping.from_saved`, host state
  through `place_state` (then global arrays for the mesh)."""
  mesh = config.get("parallel", "pmap") == "mesh"
  if mesh and mapping.is_global(state.step):
    return mapping.from_saved(state, is_sharded(config))
  state = place_state(config, state)
  return mapping.to_global(state) if mesh else state


def check_replicas(state: TrainState, include_bank: bool = True) -> bool:
  """Whether every replica, in every process, holds bit-identical params, stats and bank.

  Compares a digest of each local replica, then the digests of all processes.
  A sharded bank (different rows per device) is left out.
  """
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
    views = fn(steps.step_key(rng, step), *flat, aug_cfg)
    return {"image": np.asarray(views).reshape(*idx.shape, *views.shape[1:]), "index": idx}
  return apply


# data.on_device may take at most this share of a device's memory: the rest is
# for parameters, bank, optimizer state and activations.
def process_bounds(split: data_lib.Split) -> list[tuple[int, int]]:
  """[lo, hi) of the instances each process holds, in process order."""
  return [split.layout.process_bounds(p) for p in range(split.layout.process_count)]


def shard_features(config, feats: np.ndarray, split: data_lib.Split) -> evaluate.Rows:
  """This process's feature rows of `split` -> rows over every device (`eval.feature_dtype`)."""
  return evaluate.shard_rows(feats, split.labels, process_bounds(split),
                             dtype=config.eval.get("feature_dtype", "float32"))


def run_evaluation(config, model_eval_fn, state_variables, train, test, num_classes, *,
                   linear: bool, bank: Optional[np.ndarray] = None,
                   test_only: bool = False, log=print, classifier: Optional[bool] = None) -> dict:
  """Features of both splits with the current network, then kNN (and linear probe).

  bank: the memory bank [N, d] (host); adds `knn_top1_bank`, the test
  embeddings' kNN against the bank rows as training embeddings. test_only
  (with a bank): embeds the test split alone and reports only that, the
  `eval.knn_source="bank"` evaluation (no pass over the training set).
  Training features stay split over the devices (`evaluate.shard_rows`).
  With `linear`, the few-label settings of config.eval add `lowshot`. classifier:
  whether the method's head is a classifier of these classes (None: the method says).
  """
  nd = jax.local_device_count()
  bs = config.eval.batch_size
  test_h, test_z = evaluate.extract_features(model_eval_fn, state_variables, test,
                                             batch_size=bs, num_devices=nd,
                                             desc="embedding the test split")
  counts = [hi - lo for lo, hi in process_bounds(test)]
  knn = dict(k=config.eval.knn_k, temperature=config.eval.knn_temperature,
             num_classes=num_classes, process_counts=counts)
  out = {}
  if bank is not None:
    lo, hi = train.layout.local_bounds
    rows = shard_features(config, np.asarray(bank[lo:hi], np.float32), train)
    out["knn_top1_bank"] = evaluate.knn_top1(rows, test_z, test.labels, **knn)
    del rows
    if test_only:
      return out
  train_h, train_z = evaluate.extract_features(model_eval_fn, state_variables, train,
                                               batch_size=bs, num_devices=nd,
                                               desc="embedding the train split")
  h_rows, z_rows = shard_features(config, train_h, train), shard_features(config, train_z, train)
  # The host copies of this process's rows: the devices hold them now. The
  # few-label settings pick their subsets from the host's h.
  few_labels = linear and evaluate.lowshot.configured(config.eval)
  del train_z
  if not few_labels:
    del train_h
  out.update(evaluate.evaluate_features(
      h_rows, z_rows, test_h, test_z, test.labels, config.eval, num_classes, linear=linear,
      process_counts=counts,
      classifier=methods.get(config.method).classifier if classifier is None else classifier))
  del h_rows, z_rows
  if few_labels:
    out["lowshot"] = evaluate.evaluate_lowshot(train_h, train.labels, process_bounds(train),
                                               test_h, test.labels, config.eval, num_classes,
                                               process_counts=counts, log=log)
  return out


BankReader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def bank_reader(config, state: TrainState, num_examples: int) -> Optional[BankReader]:
  """What freshness reads of a per-device state's bank, without gathering it.

  Returns read(ids) -> (the rows at this process's instance ids [P, d], the
  whole bank's Gram matrix [d, d] float64; `freshness.gram`), or None for a
  method without a bank. Replicated, or sharded on one process: this host's
  copy (`bank_of`). Sharded over several processes: each process reads its
  own devices' rows; only the requested rows (P d values) and one Gram
  matrix per process travel between processes, so every process must call
  read at the same point.
  """
  if not methods.get(config.method).uses_bank:
    return None
  if is_sharded(config) and jax.process_count() > 1:
    return lambda ids: freshness.read_sharded(state.bank, ids)

  def read_host_copy(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bank = bank_of(config, state, num_examples)
    return bank[ids], freshness.gram(bank)
  return read_host_copy



def bank_freshness(config, p_eval, state_variables, train: data_lib.Split,
                   bank: Optional[np.ndarray | BankReader], step: int,
                   steps_per_epoch: int) -> dict:
  """How fresh the bank is at `step`, against the network of `state_variables`.

  Embeds the seeded probe set of `config.eval.freshness_probe` training
  images (evaluation preprocessing) and compares each with its bank row
  (`evaluate.freshness`): {'bank_cos_mean', 'bank_cos_p5',
  'bank_effective_rank'} and, for the momentum rule,
  {'bank_steps_since_write_mean', 'bank_steps_since_write_max'}. {} without
  a bank or with a probe of size 0. bank: a host copy [N, d], or a
  `bank_reader`'s read (then every process calls this at the same point).
  """
  size = int(config.eval.get("freshness_probe", 0))
  if bank is None or size <= 0:
    return {}
  read = bank if callable(bank) else (lambda ids: (bank[ids], freshness.gram(bank)))
  probe = freshness.probe_split(train, size)
  nd = jax.local_device_count()
  z, = evaluate.extract_features(p_eval, state_variables, probe, batch_size=config.eval.batch_size,
                                 num_devices=nd, desc="embedding the bank's probe set",
                                 keep=("z",))
  rows, g = read(probe.source_index)
  cos = evaluate.gather_rows(freshness.cosines(rows, z), probe)
  out = {"bank_cos_mean": float(np.mean(cos)),
         "bank_cos_p5": float(np.percentile(cos, freshness.PERCENTILE)),
         "bank_effective_rank": freshness.rank_of_gram(g)}
  if config.bank.update_rule == "momentum":
    epoch = max(step - 1, 0) // steps_per_epoch
    tables = {e: data_lib.epoch_indices(train.layout, global_batch=int(config.batch_size),
                                        num_local_devices=nd, seed=config.seed, epoch=e)
              for e in (epoch - 1, epoch) if e >= 0}
    since = evaluate.gather_rows(
        freshness.steps_since_write(probe.source_index, tables, step, steps_per_epoch), probe)
    out.update(bank_steps_since_write_mean=float(np.mean(since)),
               bank_steps_since_write_max=float(np.max(since)))
  return out


def bank_of(config, state: TrainState, num_examples: int) -> Optional[np.ndarray]:
  """The host copy [N, d] of a per-device state's bank, or None for a method without one."""
  if not methods.get(config.method).uses_bank:
    return None
  if is_sharded(config):
    return sharded_bank.join_bank(devices.all_rows(state.bank), num_examples)
  return np.asarray(devices.unreplicate(state.bank))
