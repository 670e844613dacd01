"""The backbone registry: `config.model.name` -> one entry of `BACKBONES`.

    from ssl_jax import models
    models.names()              # ('resnet10', ..., 'mobilenet_v2', 'vit_tiny', 'vit_small')
    models.get("vit_tiny")      # its Backbone: builder, config fields, BatchNorm, feature width
    models.create_encoder("mobilenet_v2", stem="cifar", width=0.5)

Each backbone is one module of this package and one `Backbone` entry: what
builds it from the config's `model` fields (a `Spec`), which of those fields
it reads, which stems it has, whether it has BatchNorm (the bank's
calibration mode and the cross-device BatchNorm statistics apply only then),
the width of its features h, and the optimizer settings it is usually
trained with. Nothing outside this package names a backbone.
`create_encoder` puts the shared heads (`heads.Encoder`) on top.

Adding a backbone: a module with a flax `nn.Module` that maps normalised
float32 images [B, H, W, 3] (augment.normalize) to h [B, D] float32 and has `dtype` and
`bn_axis_name` fields, then a `register(Backbone(...))` below (README,
"Add a backbone").
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models import mobilenet_v2
from ssl_jax.models import resnet
from ssl_jax.models import vit
from ssl_jax.models.heads import MLP, Encoder

STEMS = ("cifar", "imagenet")
HEADS = ("linear", "mlp")
POOLS = vit.POOLS


@dataclasses.dataclass(frozen=True)
class Spec:
  """The `config.model` fields a backbone is built from (each reads only its own)."""
  width: float = 1.0
  stem: str = "cifar"
  dtype: jnp.dtype = jnp.dtype(jnp.float32)
  bn_axis_name: Optional[str] = None   # the data axis BatchNorm statistics are reduced over
  patch_size: int = 4                  # ViT: pixels per patch side
  pool: str = "cls"                    # ViT: "cls" token or "gap" (mean of the patch tokens)


@dataclasses.dataclass(frozen=True)
class Backbone:
  """One registered backbone.

  build: Spec -> the flax backbone module.
  feature_width: width multiplier -> D, the width of h.
  fields: the `config.model` fields it reads besides `dtype` (others are ignored).
  has_batchnorm: whether it normalises with batch statistics (then the step
    syncs them across devices and `bank.calibrate_bn` chooses their mode
    for the bank's initial pass).
  stems: the `model.stem` values it accepts ("cifar": full resolution kept
    for 32 px images; "imagenet": the usual early downsampling).
  optim: the `config.optim` settings it is usually trained with; a run with
    another optimizer gets a note naming them (`run_config.optim_note`), nothing
    is changed behind the user's back.
  """
  name: str
  summary: str
  build: Callable[[Spec], nn.Module]
  feature_width: Callable[[float], int]
  fields: tuple[str, ...] = ("width", "stem")
  has_batchnorm: bool = True
  stems: tuple[str, ...] = STEMS
  optim: tuple[tuple[str, object], ...] = (("name", "sgd"),)


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
      build=lambda s, _s=_stages, _b=_block: resnet.ResNet(
          _s, _b, s.width, s.stem, s.dtype, s.bn_axis_name),
      feature_width=lambda width, _n=_name: resnet.feature_width(_n, width)))

register(Backbone(
    "mobilenet_v2", "MobileNetV2 (inverted residuals, depthwise convolutions)",
    build=lambda s: mobilenet_v2.MobileNetV2(s.width, s.stem, s.dtype, s.bn_axis_name),
    feature_width=mobilenet_v2.feature_width))

# AdamW with warmup, weight decay on kernels only (not on norms, biases, the
# position embedding or the class token): DeiT's and DINO's recipe, the
# learning rate scaled by batch / 256 as for every optimizer here.
VIT_OPTIM = (("name", "adamw"), ("base_lr", 5e-4), ("weight_decay", 0.05))
for _name, (_width, _depth, _heads) in vit.SIZES.items():
  register(Backbone(
      _name, f"ViT ({_width} wide, {_depth} blocks, {_heads} heads; LayerNorm)",
      build=lambda s, _n=_name: vit.ViT(_n, s.width, s.patch_size, s.pool, s.dtype,
                                        s.bn_axis_name),
      feature_width=lambda width, _n=_name: vit.scaled_width(_n, width),
      fields=("width", "patch_size", "pool"), has_batchnorm=False, optim=VIT_OPTIM))


# What a `config.model` without these fields (a config saved before they
# existed) means: 4 px patches and the class token, as configs/default.py sets.
FIELD_DEFAULTS = {"patch_size": 4, "pool": "cls"}


def field(model_config, name: str):
  """`config.model.<name>`, or its FIELD_DEFAULTS value where the config lacks it."""
  return model_config.get(name, FIELD_DEFAULTS[name])


def describe(model_config) -> str:
  """The fields of `config.model` its backbone reads, in words: 'width 0.25, cifar stem',
  'width 0.25, patch 4, cls pool'."""
  m = model_config
  words = {"width": lambda: f"width {m.width}", "stem": lambda: f"{m.stem} stem",
           "patch_size": lambda: f"patch {field(m, 'patch_size')}",
           "pool": lambda: f"{field(m, 'pool')} pool"}
  return ", ".join(words[f]() for f in get(m.name).fields)


def create_encoder(name: str, *, stem: str = "cifar", width: float = 1.0,
                   embed_dim: int = 128, dtype: str = "float32",
                   bn_axis_name: Optional[str] = None, head: str = "linear",
                   head_hidden: int = 2048, normalize: bool = True,
                   predictor_hidden: int = 0, patch_size: int = 4,
                   pool: str = "cls") -> Encoder:
  """Builds an encoder from config values; raises ValueError naming a bad field."""
  backbone = get(name)
  if "stem" in backbone.fields and stem not in backbone.stems:
    raise ValueError(f"config.model.stem must be one of {backbone.stems} for {name}, "
                     f"got {stem!r}.")
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.model.dtype must be 'float32' or 'bfloat16', got {dtype!r}.")
  if not width > 0:
    raise ValueError(f"config.model.width must be > 0, got {width}.")
  if head not in HEADS:
    raise ValueError(f"config.model.head must be one of {HEADS}, got {head!r}.")
  if "patch_size" in backbone.fields and not (int(patch_size) == patch_size and patch_size > 0):
    raise ValueError(f"config.model.patch_size must be a positive integer, got {patch_size!r}.")
  if "pool" in backbone.fields and pool not in POOLS:
    raise ValueError(f"config.model.pool must be one of {POOLS}, got {pool!r}.")
  module = backbone.build(Spec(width, stem, jnp.dtype(dtype), bn_axis_name, int(patch_size),
                               pool))
  return Encoder(module, embed_dim, head, head_hidden, normalize, predictor_hidden)


__all__ = ["BACKBONES", "Backbone", "Encoder", "FIELD_DEFAULTS", "HEADS", "MLP", "POOLS", "STEMS",
           "Spec", "create_encoder", "describe", "field", "get", "names", "register"]
