"""CIFAR-10, ResNet-18 (CIFAR stem), the full recipe for one GPU.

    python -m ssl_jax.main --config configs/cifar10.py --workdir runs/c10
"""

from configs import default


def get_config(method: str = "ours"):
  """`--config configs/<name>.py:npid` picks a method (ours, npid, simclr, byol)."""
  config = default.get_config(method or "ours")
  config.model.dtype = "bfloat16"
  # One softmax pass for loss, gradient and bank update (same values up to
  # rounding, fewer [B, N] temporaries); no committed result uses this config.
  config.bank.fused = True
  config.lock()
  return config
