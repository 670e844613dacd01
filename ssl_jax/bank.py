"""The memory bank: initialisers and explicit functional transitions V -> V'.

A bank is an `[N, d]` array with unit-norm rows, one row per training image
(METHOD.md, "Bank updates" and "Bank initialisation"). Every transition takes
the old bank and returns a new one; none differentiates through the encoder
(`z` enters as a constant), and every output row is unit-norm again.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import _checks

# Rows are divided by max(norm, eps): a zero row stays zero instead of NaN.
_EPS = 1e-12


def normalize_rows(x: jax.Array) -> jax.Array:
  """Scales each row of `x: [..., d]` to unit L2 norm (float32 arithmetic)."""
  x = jnp.asarray(x)
  x32 = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
  return (x32 / jnp.maximum(norm, _EPS)).astype(x.dtype)


def _check_bank_and_z(bank: jax.Array, z: jax.Array) -> None:
  _checks.check_ndim("bank", bank, 2)
  _checks.check_ndim("z", z, 2)
  if z.shape[1] != bank.shape[1]:
    raise ValueError(
        f"`z` and `bank` must have the same embedding dimension d, got z "
        f"{z.shape} and bank {bank.shape}.")


def momentum_update(bank: jax.Array, z: jax.Array, idx: jax.Array,
                    momentum: float) -> jax.Array:
  """NPID's rule: V'[idx_b] = normalize(m V[idx_b] + (1 - m) z_b); other rows kept.

  Args:
    bank: [N, d] bank V.
    z: [B, d] embeddings (treated as constants).
    idx: [B] distinct integer indices of the rows to move (an epoch is a
      permutation, so a batch never repeats an index; if it did, one of the
      duplicate writes would win). In [0, N): refused outside `jit`; under
      `jit` a row out of range is silently not written unless traced through
      `ssl_jax.checked`.
    momentum: m in [0, 1]; 1 keeps the bank, 0 overwrites rows with z.

  Returns:
    [N, d] new bank, same dtype as `bank`.
  """
  _check_bank_and_z(bank, z)
  _checks.check_indices("idx", idx, z.shape[0], bank.shape[0])
  bank, idx = jnp.asarray(bank), jnp.asarray(idx)
  _checks.check_in_range("momentum", momentum, 0.0, 1.0)
  z = jax.lax.stop_gradient(z).astype(jnp.float32)
  m = jnp.asarray(momentum, jnp.float32)
  rows = m * bank[idx].astype(jnp.float32) + (1.0 - m) * z
  return bank.at[idx].set(normalize_rows(rows).astype(bank.dtype))


def grad_update(bank: jax.Array, z: jax.Array, g: jax.Array, *, lr: float,
                temperature: float, axis_name: Optional[str] = None) -> jax.Array:
  """The gradient rule: one SGD step on the bank, then row normalisation.

  V' = normalize_rows(V - lr * G^T Z / (B * tau))

  G^T Z / (B tau) is exactly dL/dV of the batch-mean loss whose logit gradient
  is G (see `logit_grad`). The positive row moves towards z_b by (1 - p_b[i]);
  every other row moves in proportion to its probability, so each step
  touches the whole bank, not only the B positives.

  Args:
    bank: [N, d] bank V.
    z: [B, d] embeddings (treated as constants). Under pmap pass the
      all-gathered embeddings so every replica applies the same transition.
    g: [B, N] per-sample logit gradients from `logit_grad`.
    lr: eta_V >= 0, the bank learning rate.
    temperature: tau > 0, the temperature the logits were computed with.
    axis_name: inside pmap, the data axis. Each replica passes its local z and
      g; the [N, d] products G^T Z are summed over the axis (and B becomes the
      global batch), so every replica applies the identical global update
      without gathering a [B_global, N] gradient.

  Returns:
    [N, d] new bank, same dtype as `bank`.
  """
  _check_bank_and_z(bank, z)
  _checks.check_ndim("g", g, 2)
  if g.shape != (z.shape[0], bank.shape[0]):
    raise ValueError(
        f"`g` must have shape (B, N) = {(z.shape[0], bank.shape[0])}, got {g.shape}.")
  _checks.check_positive("temperature", temperature)
  _checks.check_in_range("lr", lr, 0.0, np.inf)
  bank = jnp.asarray(bank)
  z = jax.lax.stop_gradient(jnp.asarray(z))
  g = jax.lax.stop_gradient(jnp.asarray(g))
  # [B, N]^T x [B, d] -> [N, d], contracting the batch axis without a transpose.
  grad = jax.lax.dot_general(
      g.astype(jnp.float32), z.astype(jnp.float32), (((0,), (0,)), ((), ())),
      preferred_element_type=jnp.float32)
  batch = z.shape[0]
  if axis_name is not None:
    grad = jax.lax.psum(grad, axis_name)
    batch = jax.lax.psum(batch, axis_name)
  scale = jnp.asarray(lr, jnp.float32) / (batch * jnp.asarray(temperature, jnp.float32))
  new = bank.astype(jnp.float32) - scale * grad
  return normalize_rows(new).astype(bank.dtype)


def random_bank(key: jax.Array, n: int, d: int, dtype=jnp.float32) -> jax.Array:
  """NPID's initialisation: [n, d] Gaussian rows scaled to unit norm."""
  if int(n) < 1 or int(d) < 1:
    raise ValueError(f"`n` and `d` must be >= 1, got n={n}, d={d}.")
  return normalize_rows(jax.random.normal(key, (int(n), int(d)), jnp.float32)).astype(dtype)


def calibrated_bank(embed_fn: Callable[[jax.Array], jax.Array],
                    batches: Iterable[jax.Array], dtype=jnp.float32) -> jax.Array:
  """The paper's "feature calibrate" initialisation: V0[i] = z_i of the untrained net.

  Args:
    embed_fn: maps a batch of inputs [b, ...] to embeddings [b, d] (normalised
      here again, so a raw projection works too).
    batches: the whole training set in index order, as arrays [b_j, ...];
      batch sizes may differ (the last one is usually short).

  Returns:
    [N, d] bank, N = sum_j b_j, row i the embedding of example i.
  """
  rows = []
  for j, x in enumerate(batches):
    e = embed_fn(x)
    if np.ndim(e) != 2:
      raise ValueError(
          f"`embed_fn` must return [b, d] embeddings, got shape {np.shape(e)} "
          f"for batch {j}.")
    if rows and e.shape[1] != rows[0].shape[1]:
      raise ValueError(
          f"`embed_fn` returned d={e.shape[1]} for batch {j}, but d={rows[0].shape[1]} before.")
    rows.append(normalize_rows(jnp.asarray(e, jnp.float32)))
  if not rows:
    raise ValueError("`batches` is empty: the bank needs one embedding per training example.")
  return jnp.concatenate(rows, axis=0).astype(dtype)
