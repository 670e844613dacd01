"""A memory bank split by rows across the devices of the data axis.

With `config.bank.sharded=True` device k of D holds rows [k n, (k + 1) n) of
the bank, n = ceil(N / D) (the last shard is padded with rows that are never
a positive and whose logits are -inf), so bank memory per device is N d / D.
Inside the pmapped step:

  1. the embeddings z [b, d] and indices of all devices are all-gathered
     (Z: [B, d], B = D b);
  2. each device computes logits of all B embeddings against its shard
     (S_k: [B, n]); the softmax normalisers of p = softmax(s) and
     q = softmax(s / 2) are combined over devices (pmax, then psum);
  3. the loss and its logit gradient G_k = (p - onehot) + lambda (p - q)
     (the closed form of `losses.logit_grad`) are computed on each shard;
  4. dL/dZ = psum_k(G_k V_k) / (B tau) gives each device the cotangent of its
     own embeddings, which is back-propagated through the encoder with
     `jax.vjp`; differentiating through the collectives is not needed;
  5. each shard applies its part of the bank update: V_k - lr G_k^T Z / (B tau)
     for the gradient rule, or the momentum rule on the positives it owns.

The result equals the unsharded step (tests/test_sharded_bank.py): the same
loss, gradients and, gathered, the same bank. Supported objectives are the
ones with that closed-form logit gradient: SqrtKL in the default direction
("q_p") with a stop-gradient target, any weight (0 is NPID).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import bank as bank_lib
from ssl_jax import losses
from ssl_jax import bank_objective
from ssl_jax.bank_objective import BankMethodConfig


def shard_rows(num_examples: int, num_devices: int) -> int:
  """n: rows per device, ceil(N / D)."""
  return -(-int(num_examples) // int(num_devices))


def split_bank(bank: np.ndarray, num_devices: int) -> np.ndarray:
  """[N, d] -> [D, n, d], zero rows padding the last shard."""
  bank = np.asarray(bank)
  n = shard_rows(bank.shape[0], num_devices)
  padded = np.zeros((num_devices * n, bank.shape[1]), bank.dtype)
  padded[:bank.shape[0]] = bank
  return padded.reshape(num_devices, n, bank.shape[1])


def join_bank(shards: np.ndarray, num_examples: int) -> np.ndarray:
  """[D, n, d] -> [N, d], the inverse of `split_bank`."""
  shards = np.asarray(shards)
  return shards.reshape(-1, shards.shape[-1])[:num_examples]


def check_supported(cfg: BankMethodConfig) -> None:
  bank_objective.check_closed_form(cfg, "bank.sharded")


def _global_logsumexp(s: jax.Array, axis_name: str) -> jax.Array:
  """logsumexp over the bank axis of logits split across devices: [B, n] -> [B]."""
  m = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(s, axis=1)), axis_name)
  return m + jnp.log(jax.lax.psum(jnp.sum(jnp.exp(s - m[:, None]), axis=1), axis_name))


def loss_and_transition(z: jax.Array, bank_shard: jax.Array, idx: jax.Array,
                        cfg: BankMethodConfig, *, num_examples: int, axis_name: str):
  """The bank objective and transition against a row-sharded bank; call inside pmap.

  Args:
    z: [b, d] this device's embeddings (unit rows).
    bank_shard: [n, d] this device's rows of the bank.
    idx: [b] int32 global instance indices of this device's examples.
    cfg: the objective (see `check_supported`).
    num_examples: N, the real bank size (rows beyond it are padding).
    axis_name: the pmapped data axis.

  Returns:
    (metrics, dz, new_shard): metrics {'loss', 'ce', 'sqrt_kl', 'pos_prob'}
    as global batch means (the same on every device); dz [b, d] = dL_local/dz,
    the cotangent of the mean loss over this device's b examples, as
    `jax.value_and_grad` of the unsharded per-device loss would give it;
    new_shard [n, d] this device's rows after the bank transition.
  """
  z = jax.lax.stop_gradient(z)
  b, n = z.shape[0], bank_shard.shape[0]
  k = jax.lax.axis_index(axis_name)
  zz = jax.lax.all_gather(z, axis_name, tiled=True)            # [B, d]
  ii = jax.lax.all_gather(idx, axis_name, tiled=True)          # [B]
  big = zz.shape[0]
  s = losses.bank_logits(zz, bank_shard, cfg.temperature)      # [B, n]
  rows = k * n + jnp.arange(n)
  real = rows < num_examples
  s = jnp.where(real[None, :], s, -jnp.inf)
  lse_p = _global_logsumexp(s, axis_name)
  lse_q = _global_logsumexp(0.5 * s, axis_name)
  p = jnp.exp(s - lse_p[:, None])
  q = jnp.exp(0.5 * s - lse_q[:, None])
  owned = (ii >= k * n) & (ii < (k + 1) * n)
  local = jnp.clip(ii - k * n, 0, n - 1)
  pos_s = jax.lax.psum(jnp.where(owned, jnp.take_along_axis(s, local[:, None], 1)[:, 0], 0.0),
                       axis_name)                            # [B] logit of each positive
  ce = lse_p - pos_s
  # KL(q || p) = sum_j q_j (log q_j - log p_j) = sum_j q_j (-s_j / 2) + lse_p - lse_q.
  kl = jax.lax.psum(jnp.sum(jnp.where(real[None, :], q * (-0.5 * s), 0.0), axis=1),
                    axis_name) + lse_p - lse_q
  lam = jnp.asarray(cfg.kl_weight, jnp.float32)
  onehot = (owned[:, None] & (jnp.arange(n)[None, :] == local[:, None])).astype(jnp.float32)
  g = (p - onehot) + lam * (p - q)                              # [B, n], zero on padding
  # dL/dZ with L the global batch mean: psum over shards of G_k V_k / (B tau).
  gv = jax.lax.psum(jnp.dot(g, bank_shard.astype(jnp.float32)), axis_name)  # [B, d]
  inv_tau = 1.0 / jnp.asarray(cfg.temperature, jnp.float32)
  # This device's rows, scaled for the mean over its own b examples.
  dz = jax.lax.dynamic_slice_in_dim(gv, k * b, b) * inv_tau / b
  metrics = {"loss": jnp.mean(ce + lam * kl) if cfg.kl_weight else jnp.mean(ce),
             "ce": jnp.mean(ce), "sqrt_kl": jnp.mean(kl) if cfg.kl_weight else jnp.zeros(()),
             "pos_prob": jnp.mean(jnp.exp(pos_s - lse_p))}
  if cfg.update == "grad":
    grad = jax.lax.dot_general(g, zz.astype(jnp.float32), (((0,), (0,)), ((), ())))  # [n, d]
    new = bank_shard.astype(jnp.float32) - cfg.bank_lr * inv_tau / big * grad
    new = jnp.where(real[:, None], bank_lib.normalize_rows(new), 0.0)
  else:
    new = momentum_shard(bank_shard, zz, ii, k * n, cfg.momentum)
  return metrics, dz, new.astype(bank_shard.dtype)


def momentum_shard(bank_shard: jax.Array, zz: jax.Array, ii: jax.Array, offset: jax.Array,
                   momentum: float) -> jax.Array:
  """The momentum rule on the rows [offset, offset + n) a device holds: [n, d] float32.

  zz [B, d], ii [B]: the global batch's embeddings and indices. Positives
  this shard owns move; others are left alone (scattered to a dropped
  out-of-range row).
  """
  n = bank_shard.shape[0]
  owned = (ii >= offset) & (ii < offset + n)
  local = jnp.clip(ii - offset, 0, n - 1)
  m = jnp.asarray(momentum, jnp.float32)
  moved = bank_lib.normalize_rows(
      m * bank_shard[local].astype(jnp.float32) + (1.0 - m) * zz.astype(jnp.float32))
  return bank_shard.astype(jnp.float32).at[jnp.where(owned, local, n)].set(moved, mode="drop")
