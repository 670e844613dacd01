"""A bank split by rows across 4 fake CPU devices equals the replicated bank."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import data as data_lib
from ssl_jax import devices as devices_lib
from ssl_jax import run_config
from ssl_jax import sharded_bank
from ssl_jax import builders
from ssl_jax import optim
from ssl_jax import steps
from ssl_jax import train
from ssl_jax import bank_objective
from tests.helpers import needs_cifar10, setup_training, tiny_config

D = 4
AXIS = devices_lib.AXIS


def _inputs(n, b=3, d=8, seed=0):
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  z = unit(rng.normal(size=(D, b, d))).astype(np.float32)
  bank = unit(rng.normal(size=(n, d))).astype(np.float32)
  idx = rng.choice(n, size=D * b, replace=False).reshape(D, b).astype(np.int32)
  return z, bank, idx


def _unsharded(z, bank, idx, cfg):
  """The replicated reference: per-device loss, its gradient in z, the bank transition."""
  def per_device(z, bank, idx):
    def loss(z):
      s = bank_objective.losses.bank_logits(z, bank, cfg.temperature)
      total, (ce, skl) = bank_objective.loss_from_logits(s, idx, cfg)
      pos = jnp.take_along_axis(jax.nn.log_softmax(s), idx[:, None], 1)
      return total, (ce, skl, jnp.mean(jnp.exp(pos)), s)
    (total, (ce, skl, pos_prob, s)), dz = jax.value_and_grad(loss, has_aux=True)(z)
    new = bank_objective.bank_transition(bank, z, s, idx, cfg, AXIS)
    metrics = {"loss": total, "ce": ce, "sqrt_kl": skl, "pos_prob": pos_prob}
    return jax.lax.pmean(metrics, AXIS), dz, new
  return jax.pmap(per_device, axis_name=AXIS, in_axes=(0, None, 0))(z, bank, idx)


def _sharded(z, bank, idx, cfg):
  fn = lambda z, shard, idx: sharded_bank.loss_and_transition(
      z, shard, idx, cfg, num_examples=bank.shape[0], axis_name=AXIS)
  return jax.pmap(fn, axis_name=AXIS)(z, sharded_bank.split_bank(bank, D), idx)


@pytest.mark.parametrize("n", [64, 37])
@pytest.mark.parametrize("update,kl_weight", [("grad", 1.0), ("grad", 0.0), ("grad", 2.5),
                                              ("momentum", 1.0)])
def test_sharded_bank_equals_replicated_bank(n, update, kl_weight):
  assert jax.local_device_count() == D
  cfg = bank_objective.BankMethodConfig(temperature=0.1, kl_weight=kl_weight, update=update,
                                     bank_lr=3.0, momentum=0.5)
  z, bank, idx = _inputs(n)
  m_ref, dz_ref, bank_ref = _unsharded(z, bank, idx, cfg)
  m, dz, shards = _sharded(z, bank, idx, cfg)
  for key in m_ref:
    np.testing.assert_allclose(m[key], m_ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(dz, dz_ref, rtol=1e-4, atol=1e-6)
  gathered = sharded_bank.join_bank(np.asarray(shards), n)
  np.testing.assert_allclose(gathered, bank_ref[0], rtol=1e-5, atol=1e-6)
  # The update did something, and each device holds only about N / D rows.
  assert np.abs(gathered - bank).max() > 1e-3
  assert shards.shape == (D, -(-n // D), 8)
  # Padding rows (n = 37: 3 of them) stay zero and never become positives.
  np.testing.assert_array_equal(np.asarray(shards).reshape(-1, 8)[n:], 0.0)


def test_tiny_bank_with_empty_last_shard():
  # N = 5 on 4 devices: n = 2, the last device holds padding only.
  cfg = bank_objective.BankMethodConfig(temperature=0.2, kl_weight=1.0, bank_lr=1.0)
  z, bank, idx = _inputs(5, b=1)
  m_ref, dz_ref, bank_ref = _unsharded(z, bank, idx, cfg)
  m, dz, shards = _sharded(z, bank, idx, cfg)
  np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-5)
  np.testing.assert_allclose(dz, dz_ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(sharded_bank.join_bank(np.asarray(shards), 5), bank_ref[0],
                             rtol=1e-5, atol=1e-6)


def test_split_and_join_are_inverse():
  bank = np.arange(37 * 2, dtype=np.float32).reshape(37, 2)
  shards = sharded_bank.split_bank(bank, 4)
  assert shards.shape == (4, 10, 2)
  np.testing.assert_array_equal(sharded_bank.join_bank(shards, 37), bank)


def test_unsupported_sqrt_kl_variants_are_refused():
  cfg = bank_objective.BankMethodConfig()
  sharded_bank.check_supported(cfg)
  sharded_bank.check_supported(dataclasses.replace(cfg, kl_weight=0.0, kl_direction="p_q"))
  for bad in (dict(kl_direction="p_q"), dict(kl_stop_gradient=False)):
    with pytest.raises(ValueError, match="bank.sharded"):
      sharded_bank.check_supported(dataclasses.replace(cfg, **bad))


@needs_cifar10
@pytest.mark.parametrize("update_rule", [pytest.param("grad", marks=pytest.mark.slow),
                                         pytest.param("momentum", marks=pytest.mark.extended)])
def test_sharded_train_step_equals_replicated_step(update_rule):
  """Three steps of the real pmapped train step on CIFAR-10 images, both ways."""
  config = tiny_config(**{"bank.update_rule": update_rule})
  split, model, tx, state0 = setup_training(config)
  n = split.num_examples
  results = {}
  for sharded in (False, True):
    config.bank.sharded = sharded
    step = jax.pmap(builders.make_train_step(config, model, tx, 20, n), axis_name=AXIS)
    state = builders.place_state(config, state0)
    batches = data_lib.train_batches(split, global_batch=config.batch_size,
                                     num_local_devices=D, seed=0, epoch=0)
    for _, batch in zip(range(3), batches):
      state, sums = step(state, {"image": batch["image"], "index": batch["index"]})
    results[sharded] = (builders.host_state(config, state, n), steps.reduce_metrics(sums))
  (ref, m_ref), (got, m) = results[False], results[True]
  assert got.bank.shape == ref.bank.shape == (n, config.model.embed_dim)
  np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))
  assert np.abs(got.bank - np.asarray(state0.bank)).max() > 1e-3


def test_sharded_bank_with_an_unsupported_objective_is_a_config_error():
  config = tiny_config(**{"bank.sharded": True, "loss.kl_direction": "p_q"})
  with pytest.raises(run_config.ConfigError, match="bank.sharded"):
    run_config.validate_config(config, D)


@pytest.mark.slow
@needs_cifar10
def test_sharded_run_checkpoints_the_whole_bank_and_matches_a_replicated_run(tmp_path):
  import orbax.checkpoint as ocp
  finals = {}
  for sharded in (False, True):
    config = tiny_config(**{"bank.sharded": sharded, "optim.base_lr": 0.02, "bank.lr": 1.0})
    summary = train.train_and_evaluate(config, str(tmp_path / str(sharded)))
    assert summary["replicas_identical"] is True
    steps = summary["history"][-1]["step"]
    finals[sharded] = ocp.StandardCheckpointer().restore(
        tmp_path / str(sharded) / "checkpoints" / str(steps) / "default")
  assert finals[True]["bank"].shape == (summary["num_train_examples"], 128)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(finals[True]),
                          jax.tree_util.tree_leaves(finals[False])):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))
