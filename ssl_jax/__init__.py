"""ssl_jax: single-branch self-supervised learning with a memory bank, in JAX.

The pure method core is importable from the top level:

    from ssl_jax import bank_logits, instance_ce, sqrt_kl, logit_grad
    from ssl_jax import momentum_update, grad_update, random_bank, calibrated_bank

Instance indices must lie in [0, N). Outside `jit` a bad index is refused
with a ValueError; under `jit` it cannot be, so `checked(fn)` traces `fn`
with that check turned on (`jax.experimental.checkify`).

A trained encoder, for use after training (imported on first use, so
`import ssl_jax` stays light):

    encoder = ssl_jax.load_encoder("runs/quickstart")   # or an export file
    h, z = encoder.embed(ssl_jax.preprocess(image, encoder.image_size)[None])
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

_ENCODER_API = ("load_encoder", "preprocess", "Encoder", "EncoderError")


def __getattr__(name: str):
  if name in _ENCODER_API:
    from ssl_jax import encoder
    return getattr(encoder, name)
  raise AttributeError(f"module 'ssl_jax' has no attribute {name!r}")

__all__ = [
    "bank_logits", "instance_ce", "sqrt_kl", "logit_grad", "momentum_update",
    "grad_update", "random_bank", "calibrated_bank", "normalize_rows", "checked",
    *_ENCODER_API,
]
