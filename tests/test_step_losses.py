"""Each method's first step reports the loss its float64 reference gives for that step's views.

The views are rebuilt here from the documented keys (view v of step t is the
augmentation under fold_in(step_key(rng, t), v); the bank methods' single view
under step_key itself), the encoder is applied to them outside the step, and
the loss is recomputed in NumPy from its outputs. A step that draws both views
from one key, swaps a method's temperature, drops a loss term or pairs the
wrong rows reports another number and fails here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import augment
from ssl_jax import builders
from ssl_jax import data as data_lib
from ssl_jax import devices as devices_lib
from ssl_jax import steps
from tests import reference
from tests.helpers import needs_cifar10, setup_training, tiny_config
from tests.test_baseline_losses import nt_xent_reference


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _byol_reference(p, t, b):
  p, t = _unit(p), _unit(t)
  return (np.mean(2 - 2 * np.sum(p[:b] * t[b:], -1))
          + np.mean(2 - 2 * np.sum(p[b:] * t[:b], -1)))


@needs_cifar10
@pytest.mark.parametrize("method", ["ours", pytest.param("npid", marks=pytest.mark.extended),
                                    pytest.param("simclr", marks=pytest.mark.slow),
                                    pytest.param("byol", marks=pytest.mark.extended)])
def test_the_first_step_reports_the_reference_loss_of_its_views(method):
  # A random bank: the loss check needs no calibration pass (its own compilation).
  config = tiny_config(method=method, **{"bank.init": "random"})
  split, model, tx, state = setup_training(config)
  step_fn = builders.make_train_step(config, model, tx, total_steps=20)
  device = jax.local_devices()[:1]
  batch = next(data_lib.train_batches(split, global_batch=config.batch_size,
                                      num_local_devices=1, seed=0, epoch=0))
  batch = {"image": batch["image"], "index": batch["index"]}
  _, sums = jax.pmap(step_fn, axis_name=devices_lib.AXIS, devices=device)(
      devices_lib.replicate(state, device), batch)
  reported = steps.reduce_metrics(sums)["loss"]

  images, idx = batch["image"][0], batch["index"][0]
  b = idx.shape[0]
  aug_cfg = builders.augment_config(config)
  key = steps.step_key(state.rng, state.step)
  # The same encoder with batch statistics over this one-device batch, applied unpmapped.
  plain = builders.build_model(config, bn_axis_name=None)
  apply = jax.jit(lambda variables, x, **kw: plain.apply(
      variables, x, train=True, mutable=["batch_stats"], **kw)[0], static_argnames="with_prediction")
  if method in ("ours", "npid"):
    views = augment.augment_batch(key, images, idx, aug_cfg)
    _, z = apply(steps.variables(state), views)
    s = reference.bank_logits(z, state.bank, config.loss.temperature)
    expected = reference.instance_ce(s, np.asarray(idx))
    if config.loss.kl_weight:
      expected += config.loss.kl_weight * reference.sqrt_kl(s, config.loss.kl_direction)
    assert (config.loss.kl_weight > 0) == (method == "ours")
  else:
    first, second = (augment.augment_batch(jax.random.fold_in(key, v), images, idx, aug_cfg)
                     for v in (0, 1))
    assert float(jnp.abs(first - second).max(axis=(1, 2, 3)).min()) > 1e-2
    views = jnp.concatenate([first, second])
    if method == "simclr":
      _, z = apply(steps.variables(state), views)
      expected = nt_xent_reference(z[:b], z[b:], config.simclr.temperature)
    else:
      _, _, p = apply(steps.variables(state), views, with_prediction=True)
      _, t = apply(state.extra, views)
      expected = _byol_reference(p, t, b)
  np.testing.assert_allclose(reported, expected, rtol=2e-5)
