"""The objective of the single-branch bank methods (METHOD.md) and its bank transition.

One view per image is discriminated against the memory bank; the methods
built on it (`ssl_jax/methods/bank.py`) differ only in configuration: bank
init (`random`/`calibrated`), bank update (`momentum`/`grad`) and the SqrtKL
weight. Everything here is a pure function of arrays and a static config.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from ssl_jax import bank as bank_lib
from ssl_jax import losses

BANK_UPDATES = ("grad", "momentum")
BANK_INITS = ("calibrated", "random")
CALIBRATE_BN = ("inference", "batch")


@dataclasses.dataclass(frozen=True)
class BankMethodConfig:
  """Static (hashable) settings of the objective and the bank transition."""
  temperature: float = 0.1
  kl_weight: float = 1.0
  kl_direction: str = "q_p"
  kl_stop_gradient: bool = True
  update: str = "grad"
  bank_lr: float = 1.0
  momentum: float = 0.5
  # Bank rows split across the devices of the data axis (ssl_jax.sharded_bank);
  # num_examples is then the real row count N (the shards are padded).
  sharded: bool = False
  num_examples: int = 0
  # Loss, logit gradient and bank update from one softmax pass
  # (`fused_loss_and_transition`) instead of autodiff through the loss.
  fused: bool = False
  # Bank rows per chunk of the two-pass objective (`ssl_jax.chunked_bank`), for
  # the replicated and the sharded bank; 0: every row at once.
  chunk_rows: int = 0

  @classmethod
  def from_config(cls, config, num_examples: int = 0) -> "BankMethodConfig":
    return cls(temperature=float(config.loss.temperature), kl_weight=float(config.loss.kl_weight),
               kl_direction=config.loss.kl_direction,
               kl_stop_gradient=bool(config.loss.kl_stop_gradient),
               update=config.bank.update_rule, bank_lr=float(config.bank.lr),
               momentum=float(config.bank.momentum),
               sharded=bool(config.bank.get("sharded", False)), num_examples=int(num_examples),
               fused=bool(config.bank.get("fused", False)),
               chunk_rows=int(config.bank.get("chunk_rows", 0)))

  @property
  def closed_form(self) -> bool:
    """Whether the logit gradient is `losses.logit_grad`'s closed form.

    True for SqrtKL in direction "q_p" with a stop-gradient target, or no
    SqrtKL at all: what the fused and sharded passes compute.
    """
    return not self.kl_weight or (self.kl_direction == "q_p" and self.kl_stop_gradient)


def check_closed_form(cfg: BankMethodConfig, option: str) -> None:
  """Refuses an objective `option` (e.g. "bank.fused") cannot compute, naming both."""
  if not cfg.closed_form:
    raise ValueError(
        f"config.{option}=True supports SqrtKL in direction 'q_p' with a stop-gradient "
        f"target (or kl_weight=0), got direction {cfg.kl_direction!r}, stop_gradient "
        f"{cfg.kl_stop_gradient}.")


def loss_from_logits(s: jax.Array, idx: jax.Array, cfg: BankMethodConfig):
  """L = L_ce + lambda * L_skl on logits s: [B, N]; returns (L, (L_ce, L_skl))."""
  ce = losses.instance_ce(s, idx)
  if cfg.kl_weight == 0.0:
    return ce, (ce, jnp.zeros_like(ce))
  skl = losses.sqrt_kl(s, direction=cfg.kl_direction, stop_gradient=cfg.kl_stop_gradient)
  return ce + cfg.kl_weight * skl, (ce, skl)


def bank_transition(bank: jax.Array, z: jax.Array, s: jax.Array, idx: jax.Array,
                    cfg: BankMethodConfig, axis_name: Optional[str]) -> jax.Array:
  """V -> V' from this replica's z [b, d], logits s [b, N] and indices idx [b].

  Under pmap (`axis_name` set) the result is the transition of the global
  batch, identical on every replica.
  """
  z = jax.lax.stop_gradient(z)
  if cfg.update == "grad":
    if cfg.closed_form:
      g = losses.logit_grad(s, idx, kl_weight=cfg.kl_weight)
    else:
      # Any other SqrtKL variant: its exact per-sample logit gradient by autodiff.
      g = jax.grad(lambda s: loss_from_logits(s, idx, cfg)[0])(s) * s.shape[0]
    return bank_lib.grad_update(bank, z, jax.lax.stop_gradient(g), lr=cfg.bank_lr,
                                temperature=cfg.temperature, axis_name=axis_name)
  if axis_name is not None:
    z = jax.lax.all_gather(z, axis_name, tiled=True)
    idx = jax.lax.all_gather(idx, axis_name, tiled=True)
  return bank_lib.momentum_update(bank, z, idx, cfg.momentum)


def fused_loss_and_transition(z: jax.Array, bank: jax.Array, idx: jax.Array,
                              cfg: BankMethodConfig, axis_name: Optional[str]):
  """The objective, its gradient in z and the bank transition from one softmax pass.

  What `loss_from_logits` under autodiff followed by `bank_transition` gives,
  computed once: s = z V^T / tau, p, q and G = (p - onehot) + lambda (p - q)
  (the closed-form logit gradient, see `check_closed_form`), then
  dL/dz = G V / (b tau) and the bank update from the same G. Autodiff would
  recompute the softmaxes in its backward pass and the transition a third
  time, and keep more [b, N] temporaries alive (benchmarks/run.py, bank part).

  Args:
    z: [b, d] this replica's embeddings (unit rows); not differentiated here.
    bank: [N, d] the (replicated) bank V.
    idx: [b] int32 positives.
    cfg: the objective and transition; `cfg.closed_form` must hold.
    axis_name: inside pmap, the data axis (the transition is then the global
      batch's, identical on every replica), else None.

  Returns:
    (metrics, dz, new_bank): metrics {'loss', 'ce', 'sqrt_kl', 'pos_prob'} as
    means over this replica's b examples; dz [b, d] float32 = dL/dz of that
    mean, the cotangent to back-propagate through the encoder; new_bank [N, d].
  """
  check_closed_form(cfg, "bank.fused")   # else G below would not be the loss's gradient
  z = jax.lax.stop_gradient(z)
  s = losses.bank_logits(z, bank, cfg.temperature)                 # [b, N] f32
  logp = jax.nn.log_softmax(s, axis=-1)
  pos = jnp.take_along_axis(logp, idx[:, None], axis=-1)[:, 0]
  ce = -jnp.mean(pos)
  p = jnp.exp(logp)
  if cfg.kl_weight:
    logq = jax.nn.log_softmax(0.5 * s, axis=-1)
    q = jnp.exp(logq)
    skl = jnp.mean(jnp.sum(q * (logq - logp), axis=-1))
  else:
    q, skl = p, jnp.zeros_like(ce)   # lambda (p - q) vanishes either way
  g = losses.logit_grad_from_probs(p, q, idx, kl_weight=cfg.kl_weight)
  inv_tau = 1.0 / jnp.asarray(cfg.temperature, jnp.float32)
  # d(mean_b L_b)/dz = G V / (b tau); contract N with the bank as stored.
  dz = jnp.dot(g, bank.astype(jnp.float32), preferred_element_type=jnp.float32)
  dz = dz * inv_tau / z.shape[0]
  metrics = {"loss": ce + cfg.kl_weight * skl, "ce": ce, "sqrt_kl": skl,
             "pos_prob": jnp.mean(jnp.exp(pos))}
  if cfg.update == "grad":
    new_bank = bank_lib.grad_update(bank, z, g, lr=cfg.bank_lr, temperature=cfg.temperature,
                                    axis_name=axis_name)
  else:
    new_bank = bank_transition(bank, z, s, idx, cfg, axis_name)
  return metrics, dz, new_bank
