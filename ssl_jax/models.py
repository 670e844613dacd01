"""ResNet encoders: backbone g (h = g(x)) and a linear projection z = normalize(P h).

ResNet-18/34 (basic blocks) and ResNet-50 (bottlenecks) with either the CIFAR
stem (3x3 conv, stride 1, no max-pool) or the ImageNet stem (7x7 conv, stride
2, 3x3 max-pool), and a width multiplier for small models.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

STAGES = {
    "resnet10": ((1, 1, 1, 1), "basic"),
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
}
STEMS = ("cifar", "imagenet")
HEADS = ("linear", "mlp")


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
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
        dtype=self.dtype, axis_name=self.bn_axis_name if train else None)
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


class MLP(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dense: the SimCLR / BYOL projection and predictor."""
  hidden: int
  out: int
  dtype: Any
  bn_axis_name: Optional[str]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Dense(self.hidden, dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                     axis_name=self.bn_axis_name if train else None)(x)
    return nn.Dense(self.out, dtype=self.dtype)(nn.relu(x))


class Encoder(nn.Module):
  """Backbone plus projection head (plus BYOL's predictor where configured).

  Returns (h [B, D] backbone features, z [B, embed_dim] projection, unit rows
  when `normalize`), and with `with_prediction=True` also the predictor output
  p [B, embed_dim]. All outputs are float32.
  """
  backbone: ResNet
  embed_dim: int = 128
  head: str = "linear"          # "linear" (METHOD.md's P) or "mlp"
  head_hidden: int = 2048
  normalize: bool = True
  predictor_hidden: int = 0     # > 0 adds BYOL's predictor MLP

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, with_prediction: bool = False):
    h = self.backbone(x, train)
    dtype, axis = self.backbone.dtype, self.backbone.bn_axis_name
    if self.head == "mlp":
      z = MLP(self.head_hidden, self.embed_dim, dtype, axis)(h, train)
    else:
      z = nn.Dense(self.embed_dim, dtype=dtype)(h)
    z = z.astype(jnp.float32)
    if self.normalize:
      z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    if not with_prediction:
      return h, z
    p = MLP(self.predictor_hidden, self.embed_dim, dtype, axis, name="predictor")(z, train)
    return h, z, p.astype(jnp.float32)


def create_encoder(name: str, *, stem: str = "cifar", width: float = 1.0,
                   embed_dim: int = 128, dtype: str = "float32",
                   bn_axis_name: Optional[str] = None, head: str = "linear",
                   head_hidden: int = 2048, normalize: bool = True,
                   predictor_hidden: int = 0) -> Encoder:
  """Builds an encoder from config values; raises ValueError naming a bad field."""
  if name not in STAGES:
    raise ValueError(f"config.model.name must be one of {sorted(STAGES)}, got {name!r}.")
  if stem not in STEMS:
    raise ValueError(f"config.model.stem must be one of {STEMS}, got {stem!r}.")
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.model.dtype must be 'float32' or 'bfloat16', got {dtype!r}.")
  if not width > 0:
    raise ValueError(f"config.model.width must be > 0, got {width}.")
  if head not in HEADS:
    raise ValueError(f"config.model.head must be one of {HEADS}, got {head!r}.")
  stages, block = STAGES[name]
  backbone = ResNet(stages, block, width, stem, jnp.dtype(dtype), bn_axis_name)
  return Encoder(backbone, embed_dim, head, head_hidden, normalize, predictor_hidden)
