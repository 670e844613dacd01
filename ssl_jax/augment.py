"""On-device image augmentation: pure per-image JAX functions, vmapped over a batch.

The SimCLR/NPID recipe: random resized crop (scale 0.2-1, aspect 3/4-4/3),
horizontal flip, colour jitter (brightness, contrast, saturation 0.4, hue 0.1)
with probability 0.8, grayscale with probability 0.2, Gaussian blur as an
option for large images. Images enter as uint8 [H, W, 3] and leave as float32
[S, S, 3], normalised by the dataset mean and std. The four jitter operations
run in a fixed order (torchvision draws a random order); see `color_jitter`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Hashable augmentation settings (closed over by the jitted step)."""
  out_size: int
  mean: Sequence[float]
  std: Sequence[float]
  crop_scale: tuple[float, float] = (0.2, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True
  jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
  jitter_prob: float = 0.8
  gray_prob: float = 0.2
  blur_prob: float = 0.0
  # False: the images arrive cropped to out_size already (the streaming input
  # crops on the host, ssl_jax/stream.py); the rest of the view is drawn here.
  crop: bool = True


def _gray(x: jax.Array) -> jax.Array:
  """[H, W, 3] -> [H, W, 1] luma (ITU-R 601, as torchvision)."""
  return jnp.sum(x * jnp.asarray([0.299, 0.587, 0.114], x.dtype), axis=-1, keepdims=True)


def random_resized_crop(key: jax.Array, image: jax.Array, out_size: int,
                        scale: tuple[float, float], ratio: tuple[float, float]) -> jax.Array:
  """Crops a random area fraction in `scale` with aspect in `ratio`, resizes to out_size.

  One draw, the crop clipped to the image (instead of torchvision's ten
  retries), bilinear with antialiasing. image: [H, W, C] float -> [S, S, C].
  """
  h, w = image.shape[0], image.shape[1]
  k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
  area = h * w * jax.random.uniform(k_area, (), minval=scale[0], maxval=scale[1])
  log_r = jax.random.uniform(k_ratio, (), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
  aspect = jnp.exp(log_r)
  cw = jnp.clip(jnp.sqrt(area * aspect), 1.0, w)
  ch = jnp.clip(jnp.sqrt(area / aspect), 1.0, h)
  y0 = jax.random.uniform(k_y, ()) * (h - ch)
  x0 = jax.random.uniform(k_x, ()) * (w - cw)
  return _resize_window(image, y0, x0, ch, cw, out_size)


def _resize_window(image: jax.Array, top, left, height, width, out_size: int) -> jax.Array:
  """The window (top, left, height, width) of image [H, W, C] -> float [S, S, C], bilinear
  with antialiasing (Pillow's resize of a box)."""
  sy, sx = out_size / height, out_size / width
  return jax.image.scale_and_translate(
      image, (out_size, out_size, image.shape[2]), (0, 1),
      jnp.stack([sy, sx]), jnp.stack([-top * sy, -left * sx]), method="linear", antialias=True)


def resize_windows(canvases: jax.Array, windows: jax.Array, out_size: int) -> jax.Array:
  """Each canvas's window resized to out_size: the device half of the streaming input's
  "simplejpeg" decoder (`ssl_jax/decoders.py`).

  canvases: uint8 [..., C, C, 3]; windows: float [..., 4], (top, left, height,
  width) in canvas pixels. Returns uint8 [..., S, S, 3], bilinear with
  antialiasing as the host's Pillow resize, rounded as Pillow rounds.
  """
  lead = canvases.shape[:-3]
  flat = canvases.reshape((-1,) + canvases.shape[-3:]).astype(jnp.float32)
  boxes = windows.reshape(-1, 4).astype(jnp.float32)

  out = jax.vmap(lambda image, b: _resize_window(image, *b, out_size))(flat, boxes)
  out = jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)
  return out.reshape(lead + (out_size, out_size, 3))


def _rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  maxc = jnp.max(rgb, axis=-1)
  minc = jnp.min(rgb, axis=-1)
  delta = maxc - minc
  safe = jnp.where(delta > 0, delta, 1.0)
  h = jnp.where(maxc == r, (g - b) / safe,
                jnp.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  h = jnp.where(delta > 0, (h / 6.0) % 1.0, 0.0)
  s = jnp.where(maxc > 0, delta / jnp.where(maxc > 0, maxc, 1.0), 0.0)
  return jnp.stack([h, s, maxc], axis=-1)


def _hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  # Standard piecewise-linear form: channel n uses k = (n + 6h) mod 6.
  def channel(n):
    k = (n + h * 6.0) % 6.0
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def color_jitter(key: jax.Array, x: jax.Array, strength: Sequence[float]) -> jax.Array:
  """Brightness, contrast, saturation, hue, in that order; x: [H, W, 3] in [0, 1]."""
  b, c, s, hue = strength
  kb, kc, ks, kh = jax.random.split(key, 4)
  u = lambda k, r: jax.random.uniform(k, (), minval=1.0 - r, maxval=1.0 + r)
  x = jnp.clip(x * u(kb, b), 0.0, 1.0)
  x = jnp.clip((x - jnp.mean(_gray(x))) * u(kc, c) + jnp.mean(_gray(x)), 0.0, 1.0)
  x = jnp.clip((x - _gray(x)) * u(ks, s) + _gray(x), 0.0, 1.0)
  hsv = _rgb_to_hsv(x)
  shift = jax.random.uniform(kh, (), minval=-hue, maxval=hue)
  hsv = hsv.at[..., 0].set((hsv[..., 0] + shift) % 1.0)
  return jnp.clip(_hsv_to_rgb(hsv), 0.0, 1.0)


def gaussian_blur(key: jax.Array, x: jax.Array, sigma_range=(0.1, 2.0)) -> jax.Array:
  """Separable Gaussian blur, kernel ~10% of the image side; x: [H, W, C]."""
  size = max(3, (x.shape[0] // 10) | 1)
  sigma = jax.random.uniform(key, (), minval=sigma_range[0], maxval=sigma_range[1])
  t = jnp.arange(size, dtype=x.dtype) - size // 2
  k = jnp.exp(-0.5 * (t / sigma) ** 2)
  k = k / jnp.sum(k)
  pad = size // 2
  xp = jnp.pad(x, ((pad, pad), (0, 0), (0, 0)), mode="reflect")
  x = sum(k[i] * xp[i:i + x.shape[0]] for i in range(size))
  xp = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)), mode="reflect")
  return sum(k[i] * xp[:, i:i + x.shape[1]] for i in range(size))


def normalize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def augment_image(key: jax.Array, image: jax.Array, cfg: AugmentConfig) -> jax.Array:
  """One random view of one image: uint8 [H, W, 3] -> float32 [S, S, 3] normalised."""
  k_crop, k_flip, k_jit, k_pj, k_gray, k_blur, k_pb = jax.random.split(key, 7)
  x = image.astype(jnp.float32) / 255.0
  if cfg.crop:
    x = random_resized_crop(k_crop, x, cfg.out_size, cfg.crop_scale, cfg.crop_ratio)
    x = jnp.clip(x, 0.0, 1.0)  # antialiased resampling can overshoot slightly
  elif image.shape[:2] != (cfg.out_size, cfg.out_size):
    raise ValueError(f"augmentation without a crop takes images of {cfg.out_size}x"
                     f"{cfg.out_size}, got {image.shape[0]}x{image.shape[1]}.")
  if cfg.flip:
    x = jnp.where(jax.random.bernoulli(k_flip), x[:, ::-1], x)
  if cfg.jitter_prob > 0:
    x = jnp.where(jax.random.bernoulli(k_pj, cfg.jitter_prob),
                  color_jitter(k_jit, x, cfg.jitter), x)
  if cfg.gray_prob > 0:
    x = jnp.where(jax.random.bernoulli(k_gray, cfg.gray_prob),
                  jnp.broadcast_to(_gray(x), x.shape), x)
  if cfg.blur_prob > 0:
    x = jnp.where(jax.random.bernoulli(k_pb, cfg.blur_prob), gaussian_blur(k_blur, x), x)
  return normalize(x, cfg.mean, cfg.std)


def augment_batch(key: jax.Array, images: jax.Array, idx: jax.Array,
                  cfg: AugmentConfig) -> jax.Array:
  """Augments images [B, H, W, 3] uint8 -> [B, S, S, 3] float32.

  Each image's key is `fold_in(key, idx[b])`: the view depends on the step key
  and the instance index, not on which device holds the image, so a 4-device
  step sees exactly the views of a 1-device step on the same global batch.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
  return jax.vmap(lambda k, x: augment_image(k, x, cfg))(keys, images)


def preprocess_eval(images: jax.Array, cfg: AugmentConfig) -> jax.Array:
  """Evaluation view: uint8 [B, H, W, 3] -> normalised float32, no randomness."""
  return normalize(images.astype(jnp.float32) / 255.0, cfg.mean, cfg.std)
