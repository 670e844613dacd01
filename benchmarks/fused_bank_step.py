"""Candidate for the step: loss, logit gradient and bank update from one softmax pass.

    python -m benchmarks.fused_bank_step [N] [batch]

Compares, for logits + loss + gradient in z + gradient bank update (d = 128):
  current  what `train.train_step` does: autodiff through `loss_from_logits`,
           then `bank_transition` recomputes p and q for its logit gradient G;
  fused    p, q and G computed once; a custom VJP hands G / B to autodiff and
           the same G to the bank update.
Prints the largest differences of the outputs, time per call (alternating,
three rounds) and XLA's temporary buffer size, and writes
benchmarks/results/fused_bank_step_<platform>.json. Not wired into the step
yet: the rounding differs (about 1e-9), so the committed training numbers
would have to be rerun with it.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp

from ssl_jax import bank as bank_lib
from ssl_jax import losses
from ssl_jax.methods import bank_method

CFG = bank_method.BankMethodConfig(temperature=0.1, kl_weight=1.0, bank_lr=25.6)


def current(z, bank, idx):
  def loss_fn(z):
    s = losses.bank_logits(z, bank, CFG.temperature)
    loss, _ = bank_method.loss_from_logits(s, idx, CFG)
    return loss, s
  (loss, s), dz = jax.value_and_grad(loss_fn, has_aux=True)(z)
  return loss, dz, bank_method.bank_transition(bank, z, s, idx, CFG, None)


@jax.custom_vjp
def _value_with_grad(s, g, value):
  """Returns `value`; its gradient in s is g / B (g: per-sample logit gradients)."""
  return value


def _fwd(s, g, value):
  return value, g


def _bwd(g, ct):
  return g * ct / g.shape[0], None, None


_value_with_grad.defvjp(_fwd, _bwd)


def fused(z, bank, idx):
  def loss_fn(z):
    s = losses.bank_logits(z, bank, CFG.temperature)
    sg = jax.lax.stop_gradient(s)
    logp, logq = jax.nn.log_softmax(sg), jax.nn.log_softmax(0.5 * sg)
    p, q = jnp.exp(logp), jnp.exp(logq)
    pos = jnp.take_along_axis(logp, idx[:, None], 1)[:, 0]
    value = -jnp.mean(pos) + CFG.kl_weight * jnp.mean(jnp.sum(q * (logq - logp), -1))
    g = (p - jax.nn.one_hot(idx, s.shape[1])) + CFG.kl_weight * (p - q)
    return _value_with_grad(s, g, value), g
  (loss, g), dz = jax.value_and_grad(loss_fn, has_aux=True)(z)
  return loss, dz, bank_lib.grad_update(bank, z, g, lr=CFG.bank_lr, temperature=CFG.temperature)


def main(n: int = 100_000, b: int = 512, d: int = 128) -> dict:
  key = jax.random.PRNGKey(0)
  bank = bank_lib.random_bank(key, n, d)
  z = bank_lib.random_bank(jax.random.fold_in(key, 1), b, d)
  idx = jax.random.randint(jax.random.fold_in(key, 2), (b,), 0, n)
  fns = {"current": jax.jit(current), "fused": jax.jit(fused)}
  outs = {k: f(z, bank, idx) for k, f in fns.items()}
  result = {"n": n, "batch": b, "dim": d, "platform": jax.devices()[0].platform,
            "device_kind": jax.devices()[0].device_kind,
            "max_abs_diff": {k: float(jnp.max(jnp.abs(x - y))) for k, x, y in
                             zip(("loss", "dz", "bank"), outs["current"], outs["fused"])},
            "ms": {k: [] for k in fns}, "temp_mib": {}}
  for _ in range(3):
    for k, f in fns.items():
      jax.block_until_ready(f(z, bank, idx))
      t = time.perf_counter()
      for _ in range(5):
        out = f(z, bank, idx)
      jax.block_until_ready(out)
      result["ms"][k].append((time.perf_counter() - t) / 5 * 1e3)
  for k, f in fns.items():
    result["temp_mib"][k] = f.lower(z, bank, idx).compile().memory_analysis().temp_size_in_bytes / 2 ** 20
  print(json.dumps(result, indent=2))
  os.makedirs("benchmarks/results", exist_ok=True)
  with open(f"benchmarks/results/fused_bank_step_{result['platform']}.json", "w") as f:
    json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main(*map(int, sys.argv[1:]))
