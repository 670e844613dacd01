"""The single-branch bank methods: the paper's method (`ours`) and NPID.

Both discriminate one view per image against the memory bank
(`ssl_jax.bank_objective`); they differ only in configuration: bank init
(`random`/`calibrated`), bank update (`momentum`/`grad`), the SqrtKL weight
and the temperature (METHOD.md).

One step (per replica):
  uint8 images [b, H, W, 3] + instance indices [b]
  -> on-device augmentation (one view per image)
  -> encoder -> z [b, d] (unit rows)
  -> logits against the replicated bank [b, N] (or, with bank.sharded, the
     all-gathered batch against this device's rows) -> L_ce + lambda * L_skl
     (with bank.fused or bank.sharded, the loss, its gradient in z and the
     bank's update come from one softmax pass; the encoder's backward pass
     starts from that gradient; with bank.chunk_rows=C, from two passes over
     chunks of C bank rows, never holding [b, N])
  -> gradients pmean'd over the axis -> optax update
  -> bank transition of the *global* batch (psum of G^T Z, or all-gathered
     z and indices for the momentum rule), identical on every replica.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from ssl_jax import augment
from ssl_jax import bank_objective
from ssl_jax import chunked_bank
from ssl_jax import devices
from ssl_jax import losses
from ssl_jax import sharded_bank
from ssl_jax import steps
from ssl_jax.methods.base import Method
from ssl_jax.state import TrainState


def bank_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
              aug_cfg: augment.AugmentConfig, method_cfg: bank_objective.BankMethodConfig,
              axis_name: Optional[str] = devices.AXIS) -> tuple[TrainState, dict]:
  """One optimizer step and one bank transition; pure in (state, batch).

  Args:
    state: this replica's TrainState (all replicas hold the same values).
    batch: {'image': uint8 [b, H, W, 3] (or float32 views already augmented on
      the host), 'index': int32 [b] instance indices in [0, N)}.

  Returns:
    (new state, metrics) with metrics as global (sum, count) pairs.
  """
  idx = batch["index"]
  images = batch["image"]
  if images.dtype == jnp.uint8:
    with jax.named_scope("augment"):
      images = augment.augment_batch(steps.step_key(state.rng, state.step), images, idx, aug_cfg)

  if method_cfg.chunk_rows:
    objective = lambda z, bank: chunked_bank.loss_and_transition(
        z, bank, idx, method_cfg, chunk_rows=method_cfg.chunk_rows, axis_name=axis_name)
    return steps.cotangent_step(state, images, idx, objective, model=model, tx=tx,
                                axis_name=axis_name)
  if method_cfg.sharded:
    objective = lambda z, bank: sharded_bank.loss_and_transition(
        z, bank, idx, method_cfg, num_examples=method_cfg.num_examples, axis_name=axis_name)
    return steps.cotangent_step(state, images, idx, objective, model=model, tx=tx,
                                axis_name=axis_name)
  if method_cfg.fused:
    objective = lambda z, bank: bank_objective.fused_loss_and_transition(
        z, bank, idx, method_cfg, axis_name)
    return steps.cotangent_step(state, images, idx, objective, model=model, tx=tx,
                                axis_name=axis_name)

  def loss_fn(params):
    (_, z), updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  images, train=True, mutable=["batch_stats"])
    s = losses.bank_logits(z, state.bank, method_cfg.temperature)
    loss, (ce, skl) = bank_objective.loss_from_logits(s, idx, method_cfg)
    return loss, (updates.get("batch_stats", {}), z, s, ce, skl)

  (loss, (batch_stats, z, s, ce, skl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  grads, params, opt_state = steps.apply_gradients(state, grads, tx, axis_name)
  new_bank = bank_objective.bank_transition(state.bank, z, s, idx, method_cfg, axis_name)

  pos_prob = jnp.mean(jnp.exp(jnp.take_along_axis(jax.nn.log_softmax(s), idx[:, None], axis=1)))
  sums = steps.metric_sums(state, {"loss": loss, "ce": ce, "sqrt_kl": skl, "pos_prob": pos_prob},
                           idx.shape[0], grads, new_bank, axis_name)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, bank=new_bank)
  return new_state, sums


def make_step(ctx: steps.StepContext) -> steps.StepFn:
  return functools.partial(
      bank_step, model=ctx.model, tx=ctx.tx, aug_cfg=ctx.aug_cfg, axis_name=ctx.axis_name,
      method_cfg=bank_objective.BankMethodConfig.from_config(ctx.config, ctx.num_examples))


def validate(config) -> None:
  """bank.sharded, bank.fused and bank.chunk_rows compute the closed-form objective only."""
  method_cfg = bank_objective.BankMethodConfig.from_config(config)
  if int(config.bank.get("chunk_rows", 0)) < 0:
    raise ValueError(f"config.bank.chunk_rows must be >= 0 (0: no chunks), got "
                     f"{config.bank.chunk_rows}.")
  for option in ("bank.sharded", "bank.fused", "bank.chunk_rows"):
    if config.bank.get(option.split(".")[1], False):
      bank_objective.check_closed_form(method_cfg, option)


def configure_npid(config) -> None:
  """NPID: random bank, momentum update (m = 0.5), cross-entropy only, tau 0.07."""
  config.bank.init = "random"
  config.bank.update_rule = "momentum"
  config.bank.momentum = 0.5
  config.loss.kl_weight = 0.0
  config.loss.temperature = 0.07
  # NPID's own linear projection, also when the base is a recipe whose method
  # uses an MLP head (configs/cifar10.py).
  config.model.head = "linear"


OURS = Method(
    name="ours", summary="the method of METHOD.md: calibrated bank, gradient bank update, SqrtKL",
    make_step=make_step, uses_bank=True, validate=validate)
NPID = Method(
    name="npid", summary="NPID: random bank, momentum update, cross-entropy only",
    make_step=make_step, uses_bank=True, configure=configure_npid, validate=validate)
