"""The backbone registry: `config.model.name` -> one entry of `BACKBONES`.

    from ssl_jax import models
    models.names()              # ('resnet10', ..., 'resnet50', 'mobilenet_v2')
    models.get("mobilenet_v2")  # its Backbone: builder, stems, BatchNorm, feature width
    models.create_encoder("mobilenet_v2", stem="cifar", width=0.5)

Each backbone is one module of this package and one `Backbone` entry: what
builds it from the shared config fields (`model.width`, `model.stem`,
`model.dtype`), which stems it has, whether it has BatchNorm (the bank's
calibration mode and the cross-device BatchNorm statistics apply only
then), and the width of its features h. Nothing outside this package names a
backbone. `create_encoder` puts the shared heads (`heads.Encoder`) on top.

Adding a backbone: a module with a flax `nn.Module` that maps uint8-scaled
float images [B, H, W, 3] to h [B, D] float32 and has `dtype` and
`bn_axis_name` fields, then a `register(Backbone(...))` below (README,
"Adding a backbone").
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models import mobilenet_v2
from ssl_jax.models import resnet
from ssl_jax.models.heads import MLP, Encoder

STEMS = ("cifar", "imagenet")
HEADS = ("linear", "mlp")


@dataclasses.dataclass(frozen=True)
class Backbone:
  """One registered backbone.

  build: (width, stem, dtype, bn_axis_name) -> the flax backbone module.
  feature_width: width multiplier -> D, the width of h.
  has_batchnorm: whether it normalises with batch statistics (then the step
    syncs them across devices and `bank.calibrate_bn` chooses their mode
    for the bank's initial pass).
  stems: the `model.stem` values it accepts ("cifar": full resolution kept
    for 32 px images; "imagenet": the usual early downsampling).
  """
  name: str
  summary: str
  build: Callable[[float, str, jnp.dtype, Optional[str]], nn.Module]
  feature_width: Callable[[float], int]
  has_batchnorm: bool = True
  stems: tuple[str, ...] = STEMS


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
  BACKBONES[backbone.name] = backbone
  return backbone


def names() -> tuple[str, ...]:
  """The registered backbones' names, in registration order."""
  return tuple(BACKBONES)


def get(name: str) -> Backbone:
  """The registered backbone `name`; ValueError naming config.model.name otherwise."""
  if name not in BACKBONES:
    raise ValueError(f"config.model.name must be one of {sorted(BACKBONES)}, got {name!r}.")
  return BACKBONES[name]


for _name, (_stages, _block) in resnet.STAGES.items():
  register(Backbone(
      _name, f"ResNet ({_block} blocks, stages {_stages})",
      build=lambda width, stem, dtype, axis, _s=_stages, _b=_block: resnet.ResNet(
          _s, _b, width, stem, dtype, axis),
      feature_width=lambda width, _n=_name: resnet.feature_width(_n, width)))

register(Backbone(
    "mobilenet_v2", "MobileNetV2 (inverted residuals, depthwise convolutions)",
    build=lambda width, stem, dtype, axis: mobilenet_v2.MobileNetV2(width, stem, dtype, axis),
    feature_width=mobilenet_v2.feature_width))


def create_encoder(name: str, *, stem: str = "cifar", width: float = 1.0,
                   embed_dim: int = 128, dtype: str = "float32",
                   bn_axis_name: Optional[str] = None, head: str = "linear",
                   head_hidden: int = 2048, normalize: bool = True,
                   predictor_hidden: int = 0) -> Encoder:
  """Builds an encoder from config values; raises ValueError naming a bad field."""
  backbone = get(name)
  if stem not in backbone.stems:
    raise ValueError(f"config.model.stem must be one of {backbone.stems} for {name}, "
                     f"got {stem!r}.")
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.model.dtype must be 'float32' or 'bfloat16', got {dtype!r}.")
  if not width > 0:
    raise ValueError(f"config.model.width must be > 0, got {width}.")
  if head not in HEADS:
    raise ValueError(f"config.model.head must be one of {HEADS}, got {head!r}.")
  module = backbone.build(width, stem, jnp.dtype(dtype), bn_axis_name)
  return Encoder(module, embed_dim, head, head_hidden, normalize, predictor_hidden)


__all__ = ["BACKBONES", "Backbone", "Encoder", "HEADS", "MLP", "STEMS", "create_encoder", "get",
           "names", "register"]
