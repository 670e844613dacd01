"""Pure losses of the single-branch method (METHOD.md, "Forward").

Notation: B embeddings `z: [B, d]` (unit rows), a memory bank `V: [N, d]` (unit
rows), temperature tau. Logits `s = z V^T / tau: [B, N]`, `p = softmax(s)`,
`q = softmax(s / 2)` (= sqrt(p) renormalised). All functions are pure, jit-able,
vmap-able and usable inside `pmap`; they compute in float32 whatever the input
dtype, because a bf16 softmax over N = 50k entries loses the positive's mass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import _checks

DIRECTIONS = ("q_p", "p_q")


def bank_logits(z: jax.Array, bank: jax.Array, temperature: float) -> jax.Array:
  """Logits of each embedding against every bank row.

  s[b, k] = <z_b, V_k> / tau

  Args:
    z: [B, d] embeddings (float32 or bf16).
    bank: [N, d] memory bank (float32 or bf16).
    temperature: tau > 0.

  Returns:
    [B, N] float32 logits. bf16 inputs are multiplied with float32 accumulation.
  """
  _checks.check_ndim("z", z, 2)
  _checks.check_ndim("bank", bank, 2)
  if z.shape[1] != bank.shape[1]:
    raise ValueError(
        f"`z` and `bank` must have the same embedding dimension d, got z "
        f"{z.shape} and bank {bank.shape}.")
  _checks.check_positive("temperature", temperature)
  z, bank = jnp.asarray(z), jnp.asarray(bank)
  dtype = jnp.result_type(z.dtype, bank.dtype)
  # Contract d directly (no transpose copy of an N x d bank); accumulate in f32.
  s = jax.lax.dot_general(
      z.astype(dtype), bank.astype(dtype), (((1,), (1,)), ((), ())),
      preferred_element_type=jnp.float32)
  return s / jnp.asarray(temperature, jnp.float32)


def instance_ce(logits: jax.Array, idx: jax.Array) -> jax.Array:
  """Instance-discrimination cross-entropy, the NPID loss.

  L_ce = -(1/B) sum_b log softmax(s_b)[idx_b]

  Args:
    logits: [B, N] logits against the bank.
    idx: [B] integer instance index of each row (its positive bank row), in
      [0, N). Refused outside `jit`; under `jit` an index out of range gives
      NaN unless traced through `ssl_jax.checked`.

  Returns:
    Scalar float32 mean over the batch.
  """
  _checks.check_ndim("logits", logits, 2)
  _checks.check_indices("idx", idx, logits.shape[0], logits.shape[1])
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  idx = jnp.asarray(idx, jnp.int32)
  pos = jnp.take_along_axis(logp, idx[:, None], axis=-1)[:, 0]
  return -jnp.mean(pos)


def sqrt_kl(logits: jax.Array, *, direction: str = "q_p",
            stop_gradient: bool = True) -> jax.Array:
  """Self-distillation between p and its renormalised square root q.

  q = sqrt(p) / sum sqrt(p) = softmax(s / 2), p = softmax(s)
  "q_p": L = (1/B) sum_b KL(q_b || p_b) = sum_k q (log q - log p)
  "p_q": L = (1/B) sum_b KL(p_b || q_b) = sum_k p (log p - log q)

  Args:
    logits: [B, N] logits s.
    direction: "q_p" (default, q is the target) or "p_q".
    stop_gradient: if True, no gradient flows through q (the target).

  Returns:
    Scalar float32 mean over the batch. Both terms use log-softmax, so
    probabilities that underflow to 0 contribute 0, never NaN.
  """
  _checks.check_ndim("logits", logits, 2)
  if direction not in DIRECTIONS:
    raise ValueError(f"`direction` must be one of {DIRECTIONS}, got {direction!r}.")
  s = jnp.asarray(logits, jnp.float32)
  logp = jax.nn.log_softmax(s, axis=-1)
  logq = jax.nn.log_softmax(s * 0.5, axis=-1)
  if stop_gradient:
    # q is the teacher: a flatter distribution that p is pulled towards; it is
    # not itself moved towards p (METHOD.md, L_skl with stop_grad(q)).
    logq = jax.lax.stop_gradient(logq)
  if direction == "q_p":
    kl = jnp.sum(jnp.exp(logq) * (logq - logp), axis=-1)
  else:
    kl = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
  return jnp.mean(kl)


def logit_grad(logits: jax.Array, idx: jax.Array, *, kl_weight: float) -> jax.Array:
  """Per-sample gradient of L_ce + kl_weight * L_skl with respect to the logits.

  g_b = (p_b - onehot(idx_b)) + kl_weight * (p_b - q_b)

  This is B times d(L)/d(s) for the default SqrtKL (direction "q_p",
  stop-gradient): the batch mean's 1/B is left to the bank update.

  Args:
    logits: [B, N] logits s.
    idx: [B] integer positives, in [0, N). Refused outside `jit`; under
      `jit` an index out of range silently drops the positive unless traced
      through `ssl_jax.checked`.
    kl_weight: lambda, the SqrtKL weight.

  Returns:
    [B, N] float32 gradient G.
  """
  _checks.check_ndim("logits", logits, 2)
  _checks.check_indices("idx", idx, logits.shape[0], logits.shape[1])
  s = jnp.asarray(logits, jnp.float32)
  return logit_grad_from_probs(jax.nn.softmax(s, axis=-1), jax.nn.softmax(s * 0.5, axis=-1),
                               idx, kl_weight=kl_weight)


def logit_grad_from_probs(p: jax.Array, q: jax.Array, idx: jax.Array, *,
                          kl_weight: float) -> jax.Array:
  """`logit_grad` from p = softmax(s) and q = softmax(s / 2), both [B, N], already computed."""
  onehot = jax.nn.one_hot(idx, p.shape[1], dtype=jnp.float32)
  return (p - onehot) + jnp.asarray(kl_weight, jnp.float32) * (p - q)
