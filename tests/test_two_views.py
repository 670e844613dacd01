"""The two-view methods' views: two different random views of every image, each the
documented augmentation under its own key."""

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import augment
from ssl_jax import steps
from ssl_jax.state import TrainState


def test_the_two_views_differ_for_every_image_and_follow_their_keys():
  cfg = augment.AugmentConfig(out_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
  images = np.random.default_rng(0).integers(0, 256, (6, 20, 20, 3), np.uint8)
  idx = jnp.arange(10, 16, dtype=jnp.int32)
  state = TrainState(step=jnp.int32(3), params={}, batch_stats={}, opt_state=(),
                     bank=jnp.zeros((1, 2)), rng=jax.random.PRNGKey(7))
  views = np.asarray(steps.two_views(state, {"image": images, "index": idx}, cfg))
  assert views.shape == (12, 16, 16, 3)
  first, second = views[:6], views[6:]
  assert (np.abs(first - second).max(axis=(1, 2, 3)) > 1e-2).all()  # per image
  key = steps.step_key(state.rng, state.step)
  for v, got in enumerate((first, second)):
    np.testing.assert_allclose(
        got, augment.augment_batch(jax.random.fold_in(key, v), images, idx, cfg), atol=1e-6)
  # Another step gives other views.
  later = np.asarray(steps.two_views(state.replace(step=jnp.int32(4)),
                                     {"image": images, "index": idx}, cfg))
  assert np.abs(later - views).max() > 1e-2
