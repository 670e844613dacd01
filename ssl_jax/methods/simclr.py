"""SimCLR (Chen et al., 2020): two views, NT-Xent against every other view in the batch."""

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


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float,
            axis_name: Optional[str] = None) -> jax.Array:
  """The normalized-temperature cross-entropy of SimCLR, averaged over all 2B anchors.

  For anchor i (a view) the positive is the other view of the same image and
  the negatives are the other 2B - 2 views of the global batch:
    l_i = -log exp(s_ip / t) / sum_{k != i} exp(s_ik / t),  s = cosine similarity.

  Args:
    z1, z2: [b, d] projections of the two views (normalised here).
    temperature: t > 0.
    axis_name: inside pmap, the data axis: negatives come from every replica
      (all-gathered, differentiable), and the result is this replica's mean
      over its 2b anchors; the global loss is the pmean of it.

  Returns:
    Scalar float32 loss.
  """
  unit = lambda z: z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  z1, z2 = unit(z1.astype(jnp.float32)), unit(z2.astype(jnp.float32))
  b = z1.shape[0]
  anchors = jnp.concatenate([z1, z2])                             # [2b, d]
  if axis_name is None:
    keys1, keys2, offset, total = z1, z2, 0, b
  else:
    keys1 = jax.lax.all_gather(z1, axis_name, tiled=True)         # [B, d]
    keys2 = jax.lax.all_gather(z2, axis_name, tiled=True)
    offset, total = jax.lax.axis_index(axis_name) * b, keys1.shape[0]
  keys = jnp.concatenate([keys1, keys2])                          # [2B, d]
  logits = anchors @ keys.T / temperature                         # [2b, 2B]
  rows = jnp.arange(2 * b)
  local = offset + jnp.arange(b)
  self_col = jnp.concatenate([local, local + total])              # each anchor itself
  pos_col = jnp.concatenate([local + total, local])               # its other view
  logits = logits.at[rows, self_col].set(-jnp.inf)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(logp[rows, pos_col])


def simclr_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
                aug_cfg: augment.AugmentConfig, temperature: float,
                axis_name: Optional[str] = devices.AXIS) -> tuple[TrainState, dict]:
  """One SimCLR step; same contract as `ssl_jax.methods.bank.bank_step`.

  Both views of the b images go through the encoder as one [2b] batch, so
  BatchNorm sees both (and, with sync BN, the global batch of views).
  """
  x = steps.two_views(state, batch, aug_cfg)
  b = batch["index"].shape[0]

  def loss_fn(params):
    (_, z), updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
    return nt_xent(z[:b], z[b:], temperature, axis_name), updates.get("batch_stats", {})

  return steps.loss_step(state, loss_fn, b, tx=tx, axis_name=axis_name)


def make_step(ctx: steps.StepContext) -> steps.StepFn:
  return functools.partial(simclr_step, model=ctx.model, tx=ctx.tx, aug_cfg=ctx.aug_cfg,
                           temperature=float(ctx.config.simclr.temperature),
                           axis_name=ctx.axis_name)


def validate(config) -> None:
  if not config.simclr.temperature > 0:
    raise ValueError(f"config.simclr.temperature must be > 0, got {config.simclr.temperature}.")


def configure(config) -> None:
  """SimCLR's MLP projection head (the temperature is config.simclr.temperature)."""
  config.model.head = "mlp"


SIMCLR = Method(name="simclr", summary="SimCLR: two views, NT-Xent over the global batch",
                make_step=make_step, num_views=2, configure=configure, validate=validate)
