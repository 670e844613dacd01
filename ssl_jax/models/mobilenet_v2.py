"""MobileNetV2 (Sandler et al., 2018): inverted residuals with depthwise convolutions.

The ImageNet network of the paper (and torchvision's `mobilenet_v2`): a
stride-2 3x3 stem, seven stages of inverted-residual blocks (expand 1x1,
depthwise 3x3, linear project 1x1; a skip where shapes allow), a 1x1 conv
to 1280 channels and global average pooling. The width multiplier scales
every channel count (rounded to multiples of 8, as torchvision does); the
last conv keeps at least 1280 channels. The CIFAR stem ("cifar") keeps full
resolution longer for 32 px images: stride 1 in the stem and in the second
stage (total stride 8 instead of 32), as the usual CIFAR ports do.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models.heads import batch_norm

# (expansion t, channels c, blocks n, first stride s) per stage, from the paper's Table 2.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS, LAST_CHANNELS = 32, 1280


def divisible(value: float, divisor: int = 8) -> int:
  """Channels rounded to a multiple of `divisor`, never below 90% of `value`
  (torchvision's `_make_divisible`)."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def feature_width(width: float) -> int:
  """h's width: the last 1x1 conv's channels."""
  return divisible(LAST_CHANNELS * max(1.0, width))


class DepthwiseConv3x3(nn.Module):
  """3x3 depthwise convolution, padding 1: x [B, H, W, C] -> [B, H / s, W / s, C].

  The kernel is flax's grouped conv's ([3, 3, 1, C], "kernel", LeCun normal). On
  CPU it is computed as nine shifted, scaled copies of x: XLA:CPU turns a
  grouped convolution's weight gradient into a dense one, which made
  MobileNetV2's step 12x slower than ResNet-18's at equal FLOPs; the shifts
  give the same values (tests/test_backbones.py) and run fwd+bwd 3.5-7x
  faster there. Elsewhere it is `lax.conv_general_dilated` with one group
  per channel, which GPU libraries implement directly.
  """
  strides: int
  dtype: Any
  shifts: Optional[bool] = None   # None: on CPU only

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, s = x.shape[-1], self.strides
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 1, c),
                        jnp.float32).astype(self.dtype)
    x = x.astype(self.dtype)
    shifts = jax.default_backend() == "cpu" if self.shifts is None else self.shifts
    if not shifts:
      return jax.lax.conv_general_dilated(x, kernel, (s, s), ((1, 1), (1, 1)),
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                          feature_group_count=c)
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho, wo = (x.shape[1] - 1) // s + 1, (x.shape[2] - 1) // s + 1
    out = 0
    for i in range(3):
      for j in range(3):
        out = out + padded[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] * kernel[i, j, 0]
    return out


class InvertedResidual(nn.Module):
  """1x1 expand -> BN -> ReLU6 -> depthwise 3x3 -> BN -> ReLU6 -> 1x1 project -> BN."""
  out: int
  strides: int
  expansion: int
  norm: Any
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    hidden = int(round(x.shape[-1] * self.expansion))
    y = x
    if self.expansion != 1:
      y = nn.relu6(self.norm()(conv(hidden, (1, 1))(y)))
    y = DepthwiseConv3x3(self.strides, self.dtype)(y)
    y = nn.relu6(self.norm()(y))
    y = self.norm()(conv(self.out, (1, 1))(y))
    if self.strides == 1 and x.shape[-1] == self.out:
      return x + y
    return y


class MobileNetV2(nn.Module):
  """Backbone: images [B, H, W, 3] -> pooled features h [B, feature_width(width)] (float32)."""
  width: float = 1.0
  stem: str = "imagenet"
  dtype: Any = jnp.float32
  # Under pmap/shard_map, the data axis name: BatchNorm statistics of the global batch.
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train, self.dtype, self.bn_axis_name)
    cifar = self.stem == "cifar"
    x = x.astype(self.dtype)
    x = nn.Conv(divisible(STEM_CHANNELS * self.width), (3, 3), 1 if cifar else 2, padding=1,
                use_bias=False, dtype=self.dtype)(x)
    x = nn.relu6(norm()(x))
    for i, (t, c, n, s) in enumerate(STAGES):
      if cifar and i == 1:
        s = 1
      for j in range(n):
        x = InvertedResidual(divisible(c * self.width), s if j == 0 else 1, t, norm,
                             self.dtype)(x)
    x = nn.Conv(feature_width(self.width), (1, 1), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu6(norm()(x))
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
