"""Each augmentation op against an independent NumPy reference of its documented
formula (torchvision's definitions), its probability over many draws, and views that
are per instance: the bugs a tolerance test cannot see."""

import colorsys
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import augment

IDENTITY = augment.AugmentConfig(out_size=24, mean=(0, 0, 0), std=(1, 1, 1), crop_scale=(1, 1),
                                 crop_ratio=(1, 1), flip=False, jitter_prob=0.0, gray_prob=0.0)
GRAY_W = np.array([0.299, 0.587, 0.114])


def _image(seed=0, size=24):
  """A smooth colourful image in [0, 1] (float64): few pixels clip under jitter."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size] / size
  base = np.stack([0.5 + 0.3 * np.sin(3 * x + rng.uniform(0, 6)),
                   0.5 + 0.3 * np.cos(2 * y + rng.uniform(0, 6)),
                   0.3 + 0.3 * x * y], -1)
  return np.clip(base + rng.uniform(-0.05, 0.05, base.shape), 0, 1)


def _jitter(x, strength, seed):
  return np.asarray(augment.color_jitter(jax.random.PRNGKey(seed), jnp.asarray(x, jnp.float32),
                                         strength), np.float64)


def _fit(y, x_centered, y_centered, unclipped):
  m = unclipped[..., None] & np.ones_like(x_centered, bool)
  return float(np.sum(x_centered[m] * y_centered[m]) / np.sum(x_centered[m] ** 2))


@pytest.mark.parametrize("seed", range(5))
def test_brightness_contrast_and_saturation_follow_their_formulas(seed):
  x = _image(seed)
  gray = x @ GRAY_W
  # Brightness: x * f, f in [0.6, 1.4].
  y = _jitter(x, (0.4, 0, 0, 0), seed)
  ok = (y > 1e-4).all(-1) & (y < 1 - 1e-4).all(-1)
  f = _fit(y, x, y, ok)
  assert 0.6 <= f <= 1.4
  np.testing.assert_allclose(y, np.clip(x * f, 0, 1), atol=2e-5)
  # Contrast: blended with the mean of the image's gray, (x - m) f + m.
  y = _jitter(x, (0, 0.4, 0, 0), seed)
  m = gray.mean()
  ok = (y > 1e-4).all(-1) & (y < 1 - 1e-4).all(-1)
  f = _fit(y, x - m, y - m, ok)
  assert 0.6 <= f <= 1.4 and abs(f - 1) > 1e-3
  np.testing.assert_allclose(y, np.clip((x - m) * f + m, 0, 1), atol=2e-5)
  # Saturation: blended with each pixel's gray, (x - g) f + g.
  y = _jitter(x, (0, 0, 0.4, 0), seed)
  g = gray[..., None]
  ok = (y > 1e-4).all(-1) & (y < 1 - 1e-4).all(-1)
  f = _fit(y, x - g, y - g, ok)
  assert 0.6 <= f <= 1.4 and abs(f - 1) > 1e-3
  np.testing.assert_allclose(y, np.clip((x - g) * f + g, 0, 1), atol=2e-5)


@pytest.mark.parametrize("seed", range(5))
def test_hue_shifts_every_pixel_by_one_amount_as_colorsys_does(seed):
  x = _image(seed)
  y = _jitter(x, (0, 0, 0, 0.1), seed)
  hx = np.array([colorsys.rgb_to_hsv(*p) for p in x.reshape(-1, 3)])
  hy = np.array([colorsys.rgb_to_hsv(*p) for p in y.reshape(-1, 3)])
  shift = (hy[:, 0] - hx[:, 0] + 0.5) % 1.0 - 0.5
  s = float(np.median(shift))
  assert abs(s) <= 0.1 + 1e-6
  expected = np.array([colorsys.hsv_to_rgb((h + s) % 1.0, sat, v) for h, sat, v in hx])
  np.testing.assert_allclose(y.reshape(-1, 3), expected, atol=1e-4)


def test_grayscale_is_the_itu_601_luma_in_every_channel():
  cfg = dataclasses.replace(IDENTITY, gray_prob=1.0)
  img = (np.random.default_rng(0).uniform(size=(1, 24, 24, 3)) * 255).astype(np.uint8)
  out = np.asarray(augment.augment_batch(jax.random.PRNGKey(0), img, jnp.arange(1), cfg))[0]
  expected = (img[0] / 255.0) @ GRAY_W
  for c in range(3):
    np.testing.assert_allclose(out[..., c], expected, atol=1e-5)


def _blur_reference(x, sigma):
  size = max(3, (x.shape[0] // 10) | 1)
  t = np.arange(size) - size // 2
  k = np.exp(-0.5 * (t / sigma) ** 2)
  k /= k.sum()
  pad = size // 2
  xp = np.pad(x, ((pad, pad), (0, 0), (0, 0)), mode="reflect")
  x = sum(k[i] * xp[i:i + x.shape[0]] for i in range(size))
  xp = np.pad(x, ((0, 0), (pad, pad), (0, 0)), mode="reflect")
  return sum(k[i] * xp[:, i:i + x.shape[1]] for i in range(size))


@pytest.mark.parametrize("seed", range(3))
def test_blur_is_a_normalised_separable_gaussian_with_sigma_in_range(seed):
  x = _image(seed, size=40)
  key = jax.random.PRNGKey(seed)
  y = np.asarray(augment.gaussian_blur(key, jnp.asarray(x, jnp.float32)), np.float64)
  # sigma is the key's draw in [0.1, 2]: find it as the reference's best fit.
  sigmas = np.linspace(0.1, 2.0, 1901)
  errors = [np.abs(_blur_reference(x, s) - y).max() for s in sigmas[::20]]
  near = sigmas[::20][int(np.argmin(errors))]
  fine = [s for s in sigmas if abs(s - near) <= 0.02]
  best = min(fine, key=lambda s: np.abs(_blur_reference(x, s) - y).max())
  np.testing.assert_allclose(y, _blur_reference(x, best), atol=1e-4)
  assert abs(y.mean() - x.mean()) < 1e-3  # the kernel sums to one


def _crop_size(out):
  """(height, width) in input pixels of the crop a resized coordinate ramp shows: the
  slope of the ramp per output pixel, times the output size (borders left out)."""
  s = out.shape[0]
  inner = slice(2, s - 2)
  rows = np.polyfit(np.arange(s)[inner], out[inner, :, 0].mean(1), 1)[0]
  cols = np.polyfit(np.arange(s)[inner], out[:, inner, 1].mean(0), 1)[0]
  return rows * s, cols * s


def test_crop_boxes_lie_in_the_configured_scale_and_ratio():
  size, out = 96, 32
  y, x = np.mgrid[0:size, 0:size] + 0.5
  ramp = np.stack([y, x, np.zeros_like(x)], -1)  # each pixel holds its own coordinates
  cfg = augment.AugmentConfig(out_size=out, mean=(0, 0, 0), std=(1, 1, 1),
                              crop_scale=(0.2, 0.6), crop_ratio=(0.75, 1.333))
  areas, ratios = [], []
  for k in range(60):
    view = np.asarray(augment.random_resized_crop(jax.random.PRNGKey(k), jnp.asarray(ramp),
                                                  out, cfg.crop_scale, cfg.crop_ratio))
    h, w = _crop_size(view)
    areas.append(h * w / size ** 2)
    ratios.append(w / h)
  assert 0.2 - 0.02 <= min(areas) and max(areas) <= 0.6 + 0.02, (min(areas), max(areas))
  assert 0.75 - 0.03 <= min(ratios) and max(ratios) <= 1.333 + 0.03, (min(ratios), max(ratios))
  # The draws spread over the ranges (not one fixed box).
  assert max(areas) - min(areas) > 0.25 and max(ratios) - min(ratios) > 0.3


def _views(cfg, n, image):
  images = np.broadcast_to(image, (n, *image.shape)).copy()
  return np.asarray(augment.augment_batch(jax.random.PRNGKey(0), images,
                                          jnp.arange(n, dtype=jnp.int32), cfg))


def test_each_op_fires_with_its_configured_probability():
  n = 2000
  img = (_image(0) * 255).astype(np.uint8)
  plain = img / 255.0
  within = lambda frac, p: abs(frac - p) < 4 * np.sqrt(p * (1 - p) / n)
  flips = _views(dataclasses.replace(IDENTITY, flip=True), n, img)
  flipped = np.abs(flips - plain[:, ::-1]).max((1, 2, 3)) < 1e-5
  same = np.abs(flips - plain).max((1, 2, 3)) < 1e-5
  assert (flipped | same).all() and within(flipped.mean(), 0.5)
  gray = _views(dataclasses.replace(IDENTITY, gray_prob=0.2), n, img)
  is_gray = np.abs(gray[..., 0] - gray[..., 1]).max((1, 2)) < 1e-6
  assert within(is_gray.mean(), 0.2)
  jit = _views(dataclasses.replace(IDENTITY, jitter_prob=0.8), n, img)
  changed = np.abs(jit - plain).max((1, 2, 3)) > 1e-4
  assert within(changed.mean(), 0.8)
  blur = _views(dataclasses.replace(IDENTITY, blur_prob=0.3), 1000, img)
  blurred = np.abs(blur - plain).max((1, 2, 3)) > 1e-4
  assert abs(blurred.mean() - 0.3) < 4 * np.sqrt(0.21 / 1000)


def test_views_differ_per_instance_and_repeat_per_key_and_instance():
  cfg = augment.AugmentConfig(out_size=16, mean=(0, 0, 0), std=(1, 1, 1))
  img = (_image(1, 20) * 255).astype(np.uint8)
  views = _views(cfg, 8, img)   # one image under 8 instance indices
  for i in range(8):
    for j in range(i):
      assert np.abs(views[i] - views[j]).max() > 1e-3, (i, j)
  again = _views(cfg, 8, img)
  np.testing.assert_array_equal(views, again)
  # The view follows the index, not the position in the batch.
  swapped = np.asarray(augment.augment_batch(jax.random.PRNGKey(0), np.stack([img, img]),
                                             jnp.array([5, 2], jnp.int32), cfg))
  np.testing.assert_allclose(swapped, views[[5, 2]], atol=1e-6)
