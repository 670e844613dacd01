"""The fused pass (config.bank.fused): loss, its z-gradient and the bank update at once.

Against float64 NumPy references and `jax.grad` of the unfused loss, on one
device and pmapped on 4 fake CPU devices, and in the real train step.
"""

import dataclasses

import jax
import numpy as np
import pytest

from ssl_jax import data as data_lib
from ssl_jax import devices as devices_lib
from ssl_jax import losses
from ssl_jax import run_config
from ssl_jax import builders
from ssl_jax import steps
from ssl_jax import bank_objective
from tests import reference as ref
from tests.helpers import needs_cifar10, setup_training, tiny_config

AXIS = devices_lib.AXIS


def _problem(b, n, d=16, seed=0, lead=()):
  rng = np.random.default_rng(seed)
  z = ref.normalize_rows(rng.normal(size=lead + (b, d))).astype(np.float32)
  bank = ref.normalize_rows(rng.normal(size=(n, d))).astype(np.float32)
  idx = rng.permutation(n)[:int(np.prod(lead, dtype=int)) * b].reshape(lead + (b,))
  return z, bank, idx.astype(np.int32)


@pytest.mark.parametrize("update,kl_weight", [("grad", 1.0), ("grad", 0.0), ("grad", 2.5),
                                              ("momentum", 1.0), ("momentum", 0.0)])
def test_fused_pass_matches_float64_reference(update, kl_weight):
  t, lr, m = 0.1, 3.0, 0.5
  cfg = bank_objective.BankMethodConfig(temperature=t, kl_weight=kl_weight, update=update,
                                     bank_lr=lr, momentum=m, fused=True)
  z, bank, idx = _problem(6, 50)
  metrics, dz, new = jax.jit(
      lambda z, v, i: bank_objective.fused_loss_and_transition(z, v, i, cfg, None))(z, bank, idx)
  assert_matches_reference(metrics, dz, new, z, bank, idx, cfg)


def assert_matches_reference(metrics, dz, new, z, bank, idx, cfg):
  """A one-pass objective's (metrics, dz, new bank) against the float64 references."""
  t, lr, m, kl_weight, update = (cfg.temperature, cfg.bank_lr, cfg.momentum, cfg.kl_weight,
                                 cfg.update)
  b = len(idx)
  s = ref.bank_logits(z, bank, t)
  ce, skl = ref.instance_ce(s, idx), ref.sqrt_kl(s)
  np.testing.assert_allclose(metrics["ce"], ce, rtol=1e-5)
  np.testing.assert_allclose(metrics["sqrt_kl"], skl if kl_weight else 0.0, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(metrics["loss"], ce + kl_weight * skl, rtol=1e-5)
  lp = ref.log_softmax(s)
  np.testing.assert_allclose(metrics["pos_prob"], np.mean(np.exp(lp[np.arange(b), idx])),
                             rtol=1e-5)
  g = ref.logit_grad(s, idx, kl_weight)
  # d(mean_b L_b)/dz = G V / (b tau), from the chain rule through s = z V^T / tau.
  np.testing.assert_allclose(dz, g @ bank.astype(np.float64) / (b * t), rtol=1e-4, atol=1e-6)
  expected = (ref.grad_update(bank, z, g, lr, t) if update == "grad"
              else ref.momentum_update(bank, z, idx, m))
  np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-6)
  assert np.abs(expected - bank).max() > 1e-3   # the transition moved the bank


def test_fused_gradient_equals_autodiff_of_the_loss():
  cfg = bank_objective.BankMethodConfig(temperature=0.07, kl_weight=1.0, bank_lr=2.0)
  z, bank, idx = _problem(8, 300, d=32, seed=1)

  def loss(z):
    return bank_objective.loss_from_logits(losses.bank_logits(z, bank, cfg.temperature), idx, cfg)[0]

  value, grad = jax.value_and_grad(loss)(z)
  metrics, dz, _ = bank_objective.fused_loss_and_transition(z, bank, idx, cfg, None)
  np.testing.assert_allclose(metrics["loss"], value, rtol=1e-6)
  np.testing.assert_allclose(dz, grad, rtol=1e-4, atol=1e-7)
  assert np.abs(np.asarray(grad)).max() > 1e-3


@pytest.mark.parametrize("update", ["grad", "momentum"])
def test_fused_pass_under_pmap_equals_the_unfused_transition(update):
  d = jax.local_device_count()
  assert d == 4
  cfg = bank_objective.BankMethodConfig(temperature=0.1, kl_weight=1.0, update=update, bank_lr=3.0)
  z, bank, idx = _problem(3, 40, lead=(d,), seed=2)

  def unfused(z, bank, idx):
    def loss(z):
      s = losses.bank_logits(z, bank, cfg.temperature)
      return bank_objective.loss_from_logits(s, idx, cfg)[0], s
    (value, s), dz = jax.value_and_grad(loss, has_aux=True)(z)
    return value, dz, bank_objective.bank_transition(bank, z, s, idx, cfg, AXIS)

  def fused(z, bank, idx):
    metrics, dz, new = bank_objective.fused_loss_and_transition(z, bank, idx, cfg, AXIS)
    return metrics["loss"], dz, new

  run = lambda f: jax.pmap(f, axis_name=AXIS, in_axes=(0, None, 0))(z, bank, idx)
  for a, b in zip(run(fused), run(unfused)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  new = np.asarray(run(fused)[2])
  # The transition is the global batch's: every replica holds the same bank.
  np.testing.assert_array_equal(new, np.broadcast_to(new[0], new.shape))


def test_fused_refuses_sqrt_kl_variants_without_a_closed_form():
  cfg = bank_objective.BankMethodConfig(fused=True)
  assert cfg.closed_form
  assert dataclasses.replace(cfg, kl_weight=0.0, kl_direction="p_q").closed_form
  for bad in (dict(kl_direction="p_q"), dict(kl_stop_gradient=False)):
    with pytest.raises(ValueError, match="bank.fused"):
      bank_objective.check_closed_form(dataclasses.replace(cfg, **bad), "bank.fused")
    z, bank, idx = _problem(2, 10)
    with pytest.raises(ValueError, match="bank.fused"):
      bank_objective.fused_loss_and_transition(z, bank, idx, dataclasses.replace(cfg, **bad), None)
  config = tiny_config(**{"bank.fused": True, "loss.kl_stop_gradient": False})
  with pytest.raises(run_config.ConfigError, match=r"config\.bank\.fused=True"):
    run_config.validate_config(config, 1)
  # Not a bank method: the flag has nothing to fuse and is not an error.
  run_config.validate_config(tiny_config("simclr", **{"bank.fused": True,
                                                 "loss.kl_direction": "p_q"}), 1)


@needs_cifar10
@pytest.mark.parametrize("method", [pytest.param("ours", marks=pytest.mark.slow),
                                    pytest.param("npid", marks=pytest.mark.extended)])
def test_fused_train_step_equals_the_autodiff_step(method):
  """Three steps of the real pmapped train step on CIFAR-10 images, both ways."""
  config = tiny_config(method)
  split, model, tx, state0 = setup_training(config)
  results = {}
  for fused in (False, True):
    config.bank.fused = fused
    step = jax.pmap(builders.make_train_step(config, model, tx, 20), axis_name=AXIS)
    state = builders.place_state(config, state0)
    batches = data_lib.train_batches(split, global_batch=config.batch_size,
                                     num_local_devices=jax.local_device_count(), seed=0,
                                     epoch=0)
    for _, batch in zip(range(3), batches):
      state, sums = step(state, {"image": batch["image"], "index": batch["index"]})
    results[fused] = (builders.host_state(config, state, split.num_examples),
                      steps.reduce_metrics(sums))
  (ref_state, m_ref), (got, m) = results[False], results[True]
  for key in ("loss", "ce", "sqrt_kl", "pos_prob"):
    np.testing.assert_allclose(m[key], m_ref[key], rtol=1e-5, atol=1e-7, err_msg=key)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got),
                          jax.tree_util.tree_leaves(ref_state)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))
  assert np.abs(got.bank - np.asarray(state0.bank)).max() > 1e-3
