"""The single-branch bank method (METHOD.md): the paper's method and NPID in one.

Both discriminate one view per image against the memory bank; they differ only
in configuration: bank init (`random`/`calibrated`), bank update
(`momentum`/`grad`) and the SqrtKL weight (0 for NPID).
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

  @classmethod
  def from_config(cls, config, num_examples: int = 0) -> "BankMethodConfig":
    return cls(temperature=float(config.loss.temperature), kl_weight=float(config.loss.kl_weight),
               kl_direction=config.loss.kl_direction,
               kl_stop_gradient=bool(config.loss.kl_stop_gradient),
               update=config.bank.update_rule, bank_lr=float(config.bank.lr),
               momentum=float(config.bank.momentum),
               sharded=bool(config.bank.get("sharded", False)), num_examples=int(num_examples))


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
    if cfg.kl_direction == "q_p" and cfg.kl_stop_gradient:
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
