"""The bank objective and transition in chunks of bank rows: no [B, N] array anywhere.

The fused pass (`bank_objective.fused_loss_and_transition`) and the sharded
pass (`sharded_bank.loss_and_transition`) hold the logits s = z V^T / tau and
everything computed from them (p, q, the logit gradient G) for every bank
row: [B, N] float32 arrays, 11 GiB of temporaries at N = 1.28M and batch 512.
This module computes the same loss, dL/dz and new bank with `bank.chunk_rows`
= C rows of the bank at a time, in two passes (`lax.scan`):

1. for each chunk, its logits [B, C]; running maxima and the sums of the
   softmax normalisers of p (exp s) and q (exp s / 2), of q's KL term and of
   each positive's logit, rescaled as the maximum grows (the online softmax);
   across devices for a sharded bank (`pmax`, `psum`);
2. for each chunk again, its logits, p, q and G [B, C]; G V_c accumulated
   into dL/dz, and, for the gradient rule, the chunk's rows of the new bank
   (V_c - lr G^T Z / (B tau), normalised) written in place into the bank the
   scan carries (the train step donates the state, so the bank is updated
   where it lies).

Chunks are C consecutive rows (a `lax.scan`), then one chunk of the n mod C
rows left (its own static shape: no row twice, no padded copy of the bank).
Pass 2 reads each chunk before it writes it, so a chunk's logits use the
bank as it was before the step, as the unchunked passes do. The momentum rule
does not need G: it scatters the batch's rows after the passes, as the
unchunked passes do. Results equal the unchunked passes within float rounding
(tests/test_chunked_bank.py).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from ssl_jax import bank as bank_lib
from ssl_jax import bank_objective
from ssl_jax import losses
from ssl_jax import sharded_bank
from ssl_jax.bank_objective import BankMethodConfig, check_closed_form

# Below every logit (|s| <= 1 / tau), finite so that exp(m - m') of two empty
# running maxima is 1, not NaN.
_EMPTY_MAX = -1e30


def chunk_plan(num_rows: int, chunk_rows: int) -> tuple[int, int, int]:
  """(C, full chunks, rows left): `num_rows` as full chunks of C rows, then one of the rest.

  C = min(chunk_rows, num_rows). The rest is its own (smaller, static) chunk,
  so no row is computed twice and no bank copy is padded.
  """
  c = max(1, min(int(chunk_rows), int(num_rows)))
  return c, int(num_rows) // c, int(num_rows) % c


def loss_and_transition(z: jax.Array, bank: jax.Array, idx: jax.Array, cfg: BankMethodConfig,
                        *, chunk_rows: int, axis_name: Optional[str]):
  """The fused (replicated bank) or sharded (`cfg.sharded`) objective, chunk by chunk.

  Args:
    z: [b, d] this device's embeddings (unit rows); not differentiated here.
    bank: [n, d] the bank (replicated: all N rows) or this device's shard
      (sharded: rows [k n, (k + 1) n), padding beyond cfg.num_examples).
    idx: [b] int32 global indices of this device's examples.
    cfg: the objective; its closed form must hold (`check_closed_form`).
    chunk_rows: C, bank rows per chunk.
    axis_name: the pmapped data axis (required when sharded), or None.

  Returns:
    (metrics, dz, new_bank) as `fused_loss_and_transition` (replicated) or
    `sharded_bank.loss_and_transition` (sharded) return them.
  """
  check_closed_form(cfg, "bank.chunk_rows")
  z = jax.lax.stop_gradient(z)
  b, (n, _) = z.shape[0], bank.shape
  if cfg.sharded:
    k = jax.lax.axis_index(axis_name)
    zz = jax.lax.all_gather(z, axis_name, tiled=True)         # [B, d]: every query
    ii = jax.lax.all_gather(idx, axis_name, tiled=True)
    offset, num_real = k * n, cfg.num_examples
    total = lambda x: jax.lax.psum(x, axis_name)
    batch = zz.shape[0]                                         # the global batch B
  else:
    zz, ii, offset, num_real = z, idx, 0, n
    total = lambda x: x
    batch = b * (jax.lax.psum(1, axis_name) if axis_name else 1)
  c, full, rest = chunk_plan(n, chunk_rows)
  inv_tau = 1.0 / jnp.asarray(cfg.temperature, jnp.float32)
  lam = jnp.asarray(cfg.kl_weight, jnp.float32)

  def chunk(v_all, start, size: int):
    """Rows [start, start + size): V_c [size, d], real rows, logits [B_q, size] (-inf on
    padding) and where each query's positive is."""
    v = jax.lax.dynamic_slice_in_dim(v_all, start, size)
    rows = start + jnp.arange(size)
    real = offset + rows < num_real
    s = jnp.where(real[None, :], losses.bank_logits(zz, v, cfg.temperature), -jnp.inf)
    positive = real[None, :] & (offset + rows[None, :] == ii[:, None])
    return v, real, s, positive

  def over_chunks(step, carry):
    """`step(carry, start, size)` over the full chunks (a scan), then the rest."""
    carry, _ = jax.lax.scan(lambda carry, i: (step(carry, i * c, c), None), carry,
                            jnp.arange(full))
    return step(carry, full * c, rest) if rest else carry

  def first_pass(carry, start, size):
    m, sum_p, sum_q, kl_q, pos = carry
    _, _, s, positive = chunk(bank, start, size)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    e_q = jnp.exp(0.5 * (s - m_new[:, None]))                  # 0 where s = -inf
    scale_q = jnp.exp(0.5 * (m - m_new))
    sum_p = sum_p * jnp.exp(m - m_new) + jnp.sum(jnp.exp(s - m_new[:, None]), axis=1)
    kl_q = kl_q * scale_q + jnp.sum(jnp.where(e_q > 0, e_q * (-0.5 * s), 0.0), axis=1)
    sum_q = sum_q * scale_q + jnp.sum(e_q, axis=1)
    pos = pos + jnp.sum(jnp.where(positive, s, 0.0), axis=1)
    return m_new, sum_p, sum_q, kl_q, pos

  rows_q = zz.shape[0]
  zeros = jnp.zeros((rows_q,), jnp.float32)
  m, sum_p, sum_q, kl_q, pos = over_chunks(
      first_pass, (jnp.full((rows_q,), _EMPTY_MAX, jnp.float32), zeros, zeros, zeros, zeros))
  # Over the devices' shards (sharded): one maximum, sums rescaled to it.
  top = jax.lax.pmax(m, axis_name) if cfg.sharded else m
  sum_p, sum_q = total(sum_p * jnp.exp(m - top)), total(sum_q * jnp.exp(0.5 * (m - top)))
  kl_q, pos_s = total(kl_q * jnp.exp(0.5 * (m - top))), total(pos)
  lse_p, lse_q = top + jnp.log(sum_p), 0.5 * top + jnp.log(sum_q)
  ce = lse_p - pos_s
  # KL(q || p) = sum_j q_j (-s_j / 2) + lse_p - lse_q.
  kl = kl_q / sum_q + lse_p - lse_q

  def second_pass(carry, start, size):
    v_all, gv = carry
    v, real, s, positive = chunk(v_all, start, size)
    p = jnp.exp(s - lse_p[:, None])
    q = jnp.exp(0.5 * s - lse_q[:, None])
    g = (p - positive.astype(jnp.float32)) + lam * (p - q)   # [B_q, size], 0 on padding
    v32 = v.astype(jnp.float32)
    gv = gv + jnp.dot(g, v32, preferred_element_type=jnp.float32)
    if cfg.update == "grad":
      grad = jax.lax.dot_general(g, zz.astype(jnp.float32), (((0,), (0,)), ((), ())),
                                 preferred_element_type=jnp.float32)   # [size, d]
      if not cfg.sharded and axis_name is not None:
        grad = jax.lax.psum(grad, axis_name)   # the global batch's update on every replica
      new = bank_lib.normalize_rows(v32 - cfg.bank_lr * inv_tau / batch * grad)
      # Padding rows stay zero; each chunk's rows are written where they were read.
      v_all = jax.lax.dynamic_update_slice_in_dim(
          v_all, jnp.where(real[:, None], new, v32).astype(v_all.dtype), start, 0)
    return v_all, gv

  new_bank, gv = over_chunks(second_pass, (bank, jnp.zeros(zz.shape, jnp.float32)))
  if cfg.sharded:
    dz = jax.lax.dynamic_slice_in_dim(jax.lax.psum(gv, axis_name), k * b, b) * inv_tau / b
  else:
    dz = gv * inv_tau / b
  metrics = {"loss": jnp.mean(ce + lam * kl) if cfg.kl_weight else jnp.mean(ce),
             "ce": jnp.mean(ce), "sqrt_kl": jnp.mean(kl) if cfg.kl_weight else jnp.zeros(()),
             "pos_prob": jnp.mean(jnp.exp(pos_s - lse_p))}
  if cfg.update != "grad":   # the momentum rule scatters the batch's rows; no G needed
    if cfg.sharded:
      new_bank = sharded_bank.momentum_shard(bank, zz, ii, offset, cfg.momentum)
    else:   # the replicated bank's rule takes no logits
      new_bank = bank_objective.bank_transition(bank, z, None, idx, cfg, axis_name)
  return metrics, dz, new_bank.astype(bank.dtype)
