"""Vision Transformer (Dosovitskiy et al., 2021), as big_vision and DeiT build it.

Patches of `patch_size` pixels are embedded by one strided conv, a learned
position embedding is added, a class token is prepended when `pool="cls"`,
then `depth` pre-LayerNorm blocks (multi-head self-attention, then a GELU MLP
4x as wide), a final LayerNorm, and the class token's output (or the mean of
the patch tokens, `pool="gap"`) is h.

Standard sizes: ViT-Ti 192 wide, 12 blocks, 3 heads; ViT-S 384, 12, 6. The
width multiplier (`model.width`) scales the width and keeps depth and head
count (the head dimension shrinks), so `vit_tiny` at width 1/4 costs about
what ResNet-18 at width 1/4 does on 32 px images with 4 px patches.

The position embedding is a [1, g, g, D] grid for the image size the
variables were initialised at; images of another size get it resized
(bilinear) to their own grid, so an encoder trained at 224 px embeds 256 px
images. No BatchNorm: computation in `dtype` (bf16 where configured),
parameters and LayerNorm statistics in float32.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# name -> (width, depth, heads).
SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6)}
POOLS = ("cls", "gap")


def scaled_width(name: str, width: float) -> int:
  """D: the standard width times `width`, rounded to a multiple of the head count."""
  base, _, heads = SIZES[name]
  return max(1, int(round(base * width / heads))) * heads


def resize_posemb(posemb: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """A [1, g, g, D] position embedding resized to [1, grid[0], grid[1], D].

  Unchanged when the grid is the same (no resampling at all): the trained
  embedding is used as it is.
  """
  if posemb.shape[1:3] == tuple(grid):
    return posemb
  return jax.image.resize(posemb, (1, *grid, posemb.shape[-1]), method="bilinear")


class Block(nn.Module):
  """x + MHSA(LN(x)), then x + MLP(LN(x)); x [B, T, D]."""
  heads: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)
    # The attention softmax in float32 also under bf16 compute (a bf16 sum over
    # hundreds of tokens loses the small weights).
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype,
                                        deterministic=True, force_fp32_for_softmax=True)(y, y)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)
    y = nn.Dense(4 * width, dtype=self.dtype)(y)
    y = nn.Dense(width, dtype=self.dtype)(nn.gelu(y, approximate=False))
    return x + y


class ViT(nn.Module):
  """Backbone: images [B, H, W, 3] -> h [B, scaled_width(size, width)] (float32)."""
  size: str = "vit_small"
  width: float = 1.0
  patch_size: int = 16
  pool: str = "cls"
  dtype: Any = jnp.float32
  # Read by the shared heads (their BatchNorm); the ViT itself has none.
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train   # no dropout, no batch statistics: the same function in training and evaluation
    _, depth, heads = SIZES[self.size]
    width = scaled_width(self.size, self.width)
    p = self.patch_size
    if x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f"config.model.patch_size={p} must divide the image size, got images "
                       f"of {x.shape[1]}x{x.shape[2]} px.")
    x = nn.Conv(width, (p, p), strides=p, padding="VALID", dtype=self.dtype,
                name="embedding")(x.astype(self.dtype))
    b, gh, gw, _ = x.shape
    if self.has_variable("params", "pos_embedding"):
      # Read, not `self.param`: that would insist on this input's grid.
      posemb = self.get_variable("params", "pos_embedding")
    else:
      posemb = self.param("pos_embedding", nn.initializers.normal(stddev=width ** -0.5),
                          (1, gh, gw, width), jnp.float32)
    x = (x + resize_posemb(posemb, (gh, gw)).astype(self.dtype)).reshape(b, gh * gw, width)
    if self.pool == "cls":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, width), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, width)).astype(x.dtype), x], axis=1)
    for i in range(depth):
      x = Block(heads, self.dtype, name=f"block{i}")(x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
    x = x.astype(jnp.float32)
    return x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
