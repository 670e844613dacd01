"""What every method's pure train step shares, and the step over device-resident data.

A method (`ssl_jax/methods/`) builds its step `(state, batch) -> (state, sums)`
from a `StepContext` and the pieces here: the augmentation key of a step, the
gradient update (pmean over the data axis, then optax), the step for
objectives that return their own gradient in z, and the metric sums every
step returns. Everything is pure in (state, batch) and ready to pmap.

Data flow of one step (per replica, D replicas on the `batch` axis):
  uint8 images [b, H, W, 3] + instance indices [b]
  -> on-device augmentation (one view per image, or two for two-view methods)
  -> encoder -> the method's loss (or its own gradient in z)
  -> gradients pmean'd over the axis -> optax update
  -> the method's other state transitions (the bank; BYOL's EMA target)
  -> metric sums psum'd over the axis, with the divergence flags.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import augment
from ssl_jax import devices
from ssl_jax.state import TrainState

StepFn = Callable[[TrainState, dict], tuple[TrainState, dict]]


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What a method needs to build its step; made by `ssl_jax.builders.make_train_step`.

  config: the run's ml_collections config.
  model: the flax Encoder (`ssl_jax.models`).
  tx: the optax optimizer.
  aug_cfg: the augmentation of one view.
  total_steps: optimizer steps of the whole run (schedules such as BYOL's EMA).
  num_examples: N, the training split's size (the bank's rows).
  axis_name: the pmapped data axis, or None outside pmap.
  labels: int [N] the training split's labels by instance index, for methods
    that train on them; None where there are none (FLOP counts, benchmarks).
  """
  config: Any
  model: Any
  tx: optax.GradientTransformation
  aug_cfg: augment.AugmentConfig
  total_steps: int
  num_examples: int
  axis_name: Optional[str] = devices.AXIS
  labels: Optional[Any] = None


def step_key(rng: jax.Array, step: jax.Array) -> jax.Array:
  """The augmentation key of step `step`; images fold in their instance index."""
  return jax.random.fold_in(rng, step)


def variables(state: TrainState) -> dict:
  """The encoder's flax variables {'params', 'batch_stats'} of a state."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation,
                    axis_name: Optional[str]):
  """pmean'd gradients -> (grads, new params, new optimizer state).

  Every replica's loss is the mean over its own b examples; equal b on all
  replicas makes the mean of gradients the gradient of the global mean.
  """
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return grads, optax.apply_updates(state.params, updates), opt_state


def cotangent_step(state: TrainState, images: jax.Array, idx: jax.Array, objective, *,
                   model, tx, axis_name: Optional[str]) -> tuple[TrainState, dict]:
  """A train step for an objective that returns its own gradient in z.

  `objective(z, bank) -> (metric means, dz, new bank)` is e.g. the fused pass
  (`bank_objective.fused_loss_and_transition`, bank replicated) or the
  sharded one (`sharded_bank.loss_and_transition`, `state.bank` this
  device's rows). The encoder's gradient comes from `jax.vjp` with that
  cotangent, so neither the loss nor any collective is differentiated.
  """
  def forward(params):
    (_, z), updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  images, train=True, mutable=["batch_stats"])
    return z, updates.get("batch_stats", {})

  # Named scopes label the step's parts in a profile (config.profile_steps).
  with jax.named_scope("encoder"):
    z, vjp_fn, batch_stats = jax.vjp(forward, state.params, has_aux=True)
  with jax.named_scope("objective"):
    means, dz, new_bank = objective(z, state.bank)
  with jax.named_scope("encoder_backward"):
    (grads,) = vjp_fn(dz.astype(z.dtype))
  with jax.named_scope("optimizer"):
    grads, params, opt_state = apply_gradients(state, grads, tx, axis_name)
  sums = metric_sums(state, means, idx.shape[0], grads, new_bank, axis_name)
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state, bank=new_bank), sums


def two_views(state: TrainState, batch: dict, aug_cfg: augment.AugmentConfig) -> jax.Array:
  """Two augmented views of the batch as one [2b, S, S, 3] float batch (view 1, then view 2).

  View v of step t uses the key fold_in(step_key(rng, t), v). A batch may
  bring its views made elsewhere, {'views': [2, b, S, S, 3]} (the benchmarks
  time the step without its augmentation this way).
  """
  idx = batch["index"]
  if "views" in batch:
    views = [batch["views"][0], batch["views"][1]]
  else:
    key = step_key(state.rng, state.step)
    # Streamed data brings one host crop per view: uint8 [b, 2, S, S, 3].
    images = batch["image"]
    image = (lambda v: images[:, v]) if images.ndim == 5 else (lambda v: images)
    with jax.named_scope("augment"):
      views = [augment.augment_batch(jax.random.fold_in(key, v), image(v), idx, aug_cfg)
               for v in (0, 1)]
  return jnp.concatenate(views)


def loss_step(state: TrainState, loss_fn, batch_size: int, *, tx: optax.GradientTransformation,
              axis_name: Optional[str], update_extra=None) -> tuple[TrainState, dict]:
  """A step for a loss of the encoder alone; the bank (if any) is left as it is.

  loss_fn(params) -> (scalar loss, new batch_stats) is this replica's mean
  over its `batch_size` images. `update_extra(state, params, batch_stats)`,
  if given, returns the method's new `state.extra` from the updated encoder.
  """
  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads, params, opt_state = apply_gradients(state, grads, tx, axis_name)
  extra = state.extra if update_extra is None else update_extra(state, params, batch_stats)
  sums = metric_sums(state, {"loss": loss}, batch_size, grads, state.bank, axis_name)
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state, extra=extra), sums


NO_BAD_STEP = np.iinfo(np.int32).max


def metric_sums(state: TrainState, means: dict, batch: int, grads, bank: jax.Array,
                axis_name: Optional[str]) -> dict:
  """Per-replica means -> global (sum, count) pairs, plus the divergence flags.

  means must hold 'loss'; grads are the (pmean'd) gradients and bank the new
  bank, both checked for non-finite values.
  """
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
  sums["first_bad_step"] = jnp.where(sums["nonfinite"] > 0, state.step + 1, NO_BAD_STEP)
  return sums


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
          "first_bad_step": None if bad == NO_BAD_STEP else bad}


def make_indexed_step(step_fn: StepFn, steps_per_epoch: int):
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
