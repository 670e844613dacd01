"""What every backbone shares: its BatchNorm, and the heads z = normalize(P h), SimCLR's
MLP, BYOL's predictor.

The Encoder wraps any registered backbone (`ssl_jax.models`): a flax module
with `dtype` and `bn_axis_name` fields mapping images [B, H, W, 3] to
features h [B, D] (float32).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def batch_norm(train: bool, dtype: Any, axis_name: Optional[str]) -> Callable[..., nn.BatchNorm]:
  """The BatchNorm constructor of the backbones and the MLP heads. In training,
  with `axis_name` (the data axis), it normalises with the global batch's
  statistics, so a step is the same whatever the device count; at
  evaluation, with the running averages."""
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-5, dtype=dtype, axis_name=axis_name if train else None)


class MLP(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dense: the SimCLR / BYOL projection and predictor."""
  hidden: int
  out: int
  dtype: Any
  bn_axis_name: Optional[str]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Dense(self.hidden, dtype=self.dtype)(x)
    x = batch_norm(train, self.dtype, self.bn_axis_name)()(x)
    return nn.Dense(self.out, dtype=self.dtype)(nn.relu(x))


class Encoder(nn.Module):
  """Backbone plus projection head (plus BYOL's predictor where configured).

  Returns (h [B, D] backbone features, z [B, embed_dim] projection, unit rows
  when `normalize`), and with `with_prediction=True` also the predictor output
  p [B, embed_dim]. All outputs are float32.
  """
  backbone: nn.Module           # a registered backbone (`ssl_jax.models.BACKBONES`)
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
