"""ssl_jax: single-branch self-supervised learning with a memory bank, in JAX.

The pure method core is importable from the top level:

    from ssl_jax import bank_logits, instance_ce, sqrt_kl, logit_grad
    from ssl_jax import momentum_update, grad_update, random_bank, calibrated_bank

Instance indices must lie in [0, N). Outside `jit` a bad index is refused
with a ValueError; under `jit` it cannot be, so `checked(fn)` traces `fn`
with that check turned on (`jax.experimental.checkify`).
"""

from ssl_jax._checks import checked
from ssl_jax.bank import calibrated_bank
from ssl_jax.bank import grad_update
from ssl_jax.bank import momentum_update
from ssl_jax.bank import normalize_rows
from ssl_jax.bank import random_bank
from ssl_jax.losses import bank_logits
from ssl_jax.losses import instance_ce
from ssl_jax.losses import logit_grad
from ssl_jax.losses import sqrt_kl

__version__ = "0.1.0"

__all__ = [
    "bank_logits", "instance_ce", "sqrt_kl", "logit_grad", "momentum_update",
    "grad_update", "random_bank", "calibrated_bank", "normalize_rows", "checked",
]
