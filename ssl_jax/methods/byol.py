"""BYOL (Grill et al., 2020): predict an EMA target network's projection of the other view."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from ssl_jax import augment
from ssl_jax import devices
from ssl_jax import steps
from ssl_jax.methods.base import Method
from ssl_jax.state import TrainState


def byol_loss(p1: jax.Array, p2: jax.Array, t1: jax.Array, t2: jax.Array) -> jax.Array:
  """Symmetrised BYOL regression loss, mean over the batch.

    L = mean_b [(2 - 2 cos(p1_b, t2_b)) + (2 - 2 cos(p2_b, t1_b))]

  Args:
    p1, p2: [b, d] online predictions of view 1 and view 2.
    t1, t2: [b, d] target projections of view 1 and view 2 (gradients stopped
      here: the target is moved only by the EMA, never by the loss).

  Returns:
    Scalar float32 loss in [0, 8].
  """
  unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  p1, p2 = unit(p1.astype(jnp.float32)), unit(p2.astype(jnp.float32))
  t1 = unit(jax.lax.stop_gradient(t1).astype(jnp.float32))
  t2 = unit(jax.lax.stop_gradient(t2).astype(jnp.float32))
  return jnp.mean(2 - 2 * jnp.sum(p1 * t2, -1)) + jnp.mean(2 - 2 * jnp.sum(p2 * t1, -1))


def target_decay(step: jax.Array, total_steps: int, base: float) -> jax.Array:
  """BYOL's cosine schedule of the EMA decay: base at step 0, 1 at the last step."""
  frac = jnp.clip(step / jnp.maximum(total_steps, 1), 0.0, 1.0)
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * frac) + 1.0) / 2.0


def ema(target, online, decay: jax.Array):
  """target <- decay * target + (1 - decay) * online, leaf by leaf."""
  return jax.tree_util.tree_map(lambda t, o: decay * t + (1.0 - decay) * o, target, online)


def byol_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
              aug_cfg: augment.AugmentConfig, total_steps: int, base_decay: float,
              axis_name: Optional[str] = devices.AXIS) -> tuple[TrainState, dict]:
  """One BYOL step; same contract as `ssl_jax.methods.bank.bank_step`.

  state.extra is the target network {'params', 'batch_stats'}. Both views go
  through the online and the target network as one [2b] batch; the target
  then moves towards the updated online network by EMA.
  """
  x = steps.two_views(state, batch, aug_cfg)
  b = batch["index"].shape[0]

  def loss_fn(params):
    (_, _, p), updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                     train=True, with_prediction=True, mutable=["batch_stats"])
    # The target normalises with its own batch statistics; its running
    # statistics follow the online network's by EMA below.
    (_, t), _ = model.apply(state.extra, x, train=True, mutable=["batch_stats"])
    return byol_loss(p[:b], p[b:], t[:b], t[b:]), updates.get("batch_stats", {})

  def update_target(state, params, batch_stats):
    decay = target_decay(state.step, total_steps, base_decay)
    return ema(state.extra, {"params": params, "batch_stats": batch_stats}, decay)

  return steps.loss_step(state, loss_fn, b, tx=tx, axis_name=axis_name,
                         update_extra=update_target)


def make_step(ctx: steps.StepContext) -> steps.StepFn:
  return functools.partial(byol_step, model=ctx.model, tx=ctx.tx, aug_cfg=ctx.aug_cfg,
                           total_steps=ctx.total_steps,
                           base_decay=float(ctx.config.byol.target_decay),
                           axis_name=ctx.axis_name)


def validate(config) -> None:
  if not 0.0 <= config.byol.target_decay <= 1.0:
    raise ValueError(f"config.byol.target_decay must be in [0, 1], got "
                     f"{config.byol.target_decay}.")


def configure(config) -> None:
  """BYOL's MLP projector (its predictor has the same hidden width)."""
  config.model.head = "mlp"


def model_options(config) -> dict:
  # BYOL regresses raw projections through its predictor; the others use unit z.
  return {"normalize": False, "predictor_hidden": int(config.model.head_hidden)}


def init_target(state: TrainState) -> dict:
  """The target network starts as a copy of the online one."""
  return steps.variables(state)


BYOL = Method(name="byol", summary="BYOL: two views, EMA target network, MLP predictor",
              make_step=make_step, num_views=2, configure=configure, validate=validate,
              model_options=model_options, init_extra=init_target)
