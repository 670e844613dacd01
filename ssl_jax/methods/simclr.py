"""SimCLR (Chen et al., 2020): two views, NT-Xent against every other view in the batch."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


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
