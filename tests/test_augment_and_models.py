"""On-device augmentation and the ResNet family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import augment
from ssl_jax import models

CFG = augment.AugmentConfig(out_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _images(n=6, size=20):
  return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_views_are_random_per_image_and_reproducible():
  x, idx = _images(), jnp.arange(6)
  key = jax.random.PRNGKey(0)
  fn = jax.jit(augment.augment_batch, static_argnums=3)
  a, b = fn(key, x, idx, CFG), fn(key, x, idx, CFG)
  assert a.shape == (6, 16, 16, 3) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, fn(jax.random.PRNGKey(1), x, idx, CFG))
  # Values stay inside the normalised [0, 1] range.
  assert float(a.min()) >= -2.0 - 1e-5 and float(a.max()) <= 2.0 + 1e-5
  # A view depends on the image's index, not on its position in the batch:
  # splitting the batch across devices changes nothing.
  halves = jnp.concatenate([fn(key, x[:3], idx[:3], CFG), fn(key, x[3:], idx[3:], CFG)])
  np.testing.assert_allclose(halves, a, atol=1e-5)


def test_identity_settings_reproduce_the_evaluation_view():
  cfg = augment.AugmentConfig(out_size=20, mean=CFG.mean, std=CFG.std, crop_scale=(1.0, 1.0),
                              crop_ratio=(1.0, 1.0), flip=False, jitter_prob=0.0, gray_prob=0.0)
  x = _images()
  out = augment.augment_batch(jax.random.PRNGKey(0), x, jnp.arange(6), cfg)
  np.testing.assert_allclose(out, augment.preprocess_eval(x, cfg), atol=1e-5)


def test_grayscale_and_flip_do_what_they_say():
  x = _images(1)
  gray_cfg = augment.AugmentConfig(out_size=20, mean=(0, 0, 0), std=(1, 1, 1), crop_scale=(1, 1),
                                   crop_ratio=(1, 1), flip=False, jitter_prob=0.0, gray_prob=1.0)
  out = np.asarray(augment.augment_batch(jax.random.PRNGKey(0), x, jnp.arange(1), gray_cfg))
  np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)
  flips = [np.asarray(augment.augment_batch(jax.random.PRNGKey(k), x, jnp.arange(1),
                                            gray_cfg.__class__(**{**gray_cfg.__dict__, "flip": True, "gray_prob": 0.0})))
           for k in range(8)]
  plain = x[0].astype(np.float32) / 255
  kinds = {("same" if np.allclose(f[0], plain, atol=1e-5) else
            "flipped" if np.allclose(f[0], plain[:, ::-1], atol=1e-5) else "other") for f in flips}
  assert kinds == {"same", "flipped"}


def test_color_jitter_hue_roundtrip_matches_colorsys():
  import colorsys
  rgb = np.random.default_rng(1).uniform(size=(50, 3)).astype(np.float32)
  hsv = np.asarray(augment._rgb_to_hsv(jnp.asarray(rgb)))
  np.testing.assert_allclose(hsv, [colorsys.rgb_to_hsv(*p) for p in rgb.astype(np.float64)],
                             atol=1e-5)
  np.testing.assert_allclose(augment._hsv_to_rgb(jnp.asarray(hsv)), rgb, atol=1e-5)


def _count(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("name,stem,size,expected", [
    # torchvision's counts without the 1000-way classifier; CIFAR stem: 3x3 conv.
    ("resnet18", "imagenet", 64, 11_176_512),
    ("resnet18", "cifar", 32, 11_176_512 - 64 * 3 * 49 + 64 * 3 * 9),
    ("resnet50", "imagenet", 64, 23_508_032),
])
def test_backbone_parameter_counts_match_torchvision(name, stem, size, expected):
  enc = models.create_encoder(name, stem=stem)
  variables = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0),
                                              jnp.zeros((1, size, size, 3)), train=False))
  assert _count(variables["params"]["backbone"]) == expected


def test_encoder_outputs_and_width():
  enc = models.create_encoder("resnet10", width=0.25, embed_dim=32)
  x = jnp.ones((2, 32, 32, 3))
  variables = enc.init(jax.random.PRNGKey(0), x, train=False)
  h, z = enc.apply(variables, x, train=False)
  assert h.shape == (2, 128) and z.shape == (2, 32)
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="config.model.name"):
    models.create_encoder("resnet19")
  with pytest.raises(ValueError, match="config.model.stem"):
    models.create_encoder("resnet18", stem="tiny")
