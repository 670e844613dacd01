"""CIFAR-10, ResNet-18 (CIFAR stem), the full recipe for one GPU.

    python -m ssl_jax.main --config configs/cifar10.py --workdir runs/c10
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.dtype = "bfloat16"
  config.lock()
  return config
