"""BYOL (Grill et al., 2020): predict an EMA target network's projection of the other view."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
