"""ResNet backbones: images -> pooled features h.

ResNet-10/18/34 (basic blocks) and ResNet-50 (bottlenecks) with either the
CIFAR stem (3x3 conv, stride 1, no max-pool) or the ImageNet stem (7x7 conv,
stride 2, 3x3 max-pool), and a width multiplier for small models.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models.heads import batch_norm

STAGES = {
    "resnet10": ((1, 1, 1, 1), "basic"),
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
}


class BasicBlock(nn.Module):
  filters: int
  strides: int
  norm: Any
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    y = conv(self.filters, (3, 3), self.strides, padding=1)(x)
    y = nn.relu(self.norm()(y))
    y = conv(self.filters, (3, 3), padding=1)(y)
    # Zero-init the last BN scale: each block starts as the identity.
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = self.norm()(conv(self.filters, (1, 1), self.strides)(x))
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  filters: int
  strides: int
  norm: Any
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    y = nn.relu(self.norm()(conv(self.filters, (1, 1))(x)))
    y = nn.relu(self.norm()(conv(self.filters, (3, 3), self.strides, padding=1)(y)))
    y = self.norm(scale_init=nn.initializers.zeros)(conv(self.filters * 4, (1, 1))(y))
    if x.shape != y.shape:
      x = self.norm()(conv(self.filters * 4, (1, 1), self.strides)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Backbone: images [B, H, W, 3] -> pooled features h [B, D] (float32)."""
  stage_sizes: Sequence[int]
  block: str = "basic"
  width: float = 1.0
  stem: str = "cifar"
  dtype: Any = jnp.float32
  # Under pmap, the data axis name: BatchNorm then normalises with statistics of
  # the global batch, so a step is the same whatever the device count.
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train, self.dtype, self.bn_axis_name)
    block = BasicBlock if self.block == "basic" else Bottleneck
    base = max(8, int(round(64 * self.width)))
    x = x.astype(self.dtype)
    if self.stem == "cifar":
      x = nn.Conv(base, (3, 3), padding=1, use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(norm()(x))
    else:
      x = nn.Conv(base, (7, 7), 2, padding=3, use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(norm()(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
    for i, n_blocks in enumerate(self.stage_sizes):
      for j in range(n_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block(base * 2**i, strides, norm, self.dtype)(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def feature_width(name: str, width: float) -> int:
  """h's width: the last stage's channels (x4 for bottlenecks)."""
  stages, block = STAGES[name]
  base = max(8, int(round(64 * width)))
  return base * 2 ** (len(stages) - 1) * (4 if block == "bottleneck" else 1)
