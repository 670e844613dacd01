"""The chunked bank pass (config.bank.chunk_rows) equals the unchunked passes.

Against the float64 references on one device, and against the fused pass
(replicated bank) and the sharded pass under pmap on 4 fake CPU devices, with
chunk sizes that divide neither N nor N / D, for every supported objective.
"""

import dataclasses

import jax
import numpy as np
import pytest

from ssl_jax import bank_objective
from ssl_jax import chunked_bank
from ssl_jax import devices as devices_lib
from ssl_jax import sharded_bank
from tests.helpers import needs_cifar10, setup_training, tiny_config
from tests.test_fused_bank import _problem, assert_matches_reference

AXIS = devices_lib.AXIS
OBJECTIVES = [("grad", 1.0), ("grad", 0.0), ("grad", 2.5), ("momentum", 1.0), ("momentum", 0.0)]


def _cfg(update, kl_weight, **kw):
  return bank_objective.BankMethodConfig(temperature=0.1, kl_weight=kl_weight, update=update,
                                         bank_lr=3.0, momentum=0.5, **kw)


def test_a_bank_is_cut_into_full_chunks_and_the_rest():
  assert chunked_bank.chunk_plan(10, 4) == (4, 2, 2)
  assert chunked_bank.chunk_plan(12, 4) == (4, 3, 0)
  assert chunked_bank.chunk_plan(10, 64) == (10, 1, 0)   # C above n: one chunk of n rows


@pytest.mark.parametrize("chunk", [7, 50, 1000])
@pytest.mark.parametrize("update,kl_weight", OBJECTIVES)
def test_chunked_pass_matches_float64_reference(update, kl_weight, chunk):
  cfg = _cfg(update, kl_weight)
  z, bank, idx = _problem(6, 50)
  metrics, dz, new = jax.jit(lambda z, v, i: chunked_bank.loss_and_transition(
      z, v, i, cfg, chunk_rows=chunk, axis_name=None))(z, bank, idx)
  assert_matches_reference(metrics, dz, new, z, bank, idx, cfg)


@pytest.mark.parametrize("update,kl_weight", OBJECTIVES)
def test_chunked_pass_under_pmap_equals_the_fused_pass(update, kl_weight):
  d = jax.local_device_count()
  cfg = _cfg(update, kl_weight, fused=True)
  z, bank, idx = _problem(3, 41, lead=(d,), seed=2)
  fused = jax.pmap(lambda z, i: bank_objective.fused_loss_and_transition(z, bank, i, cfg, AXIS),
                   axis_name=AXIS)(z, idx)
  chunked = jax.pmap(lambda z, i: chunked_bank.loss_and_transition(
      z, bank, i, cfg, chunk_rows=9, axis_name=AXIS), axis_name=AXIS)(z, idx)
  for a, b in zip(jax.tree_util.tree_leaves(fused), jax.tree_util.tree_leaves(chunked)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  new = np.asarray(chunked[2])
  assert all(np.array_equal(new[0], new[r]) for r in range(d))   # one bank on every replica


@pytest.mark.parametrize("n,chunk", [(37, 4), (64, 5), (5, 3)])
@pytest.mark.parametrize("update,kl_weight", OBJECTIVES)
def test_chunked_sharded_pass_equals_the_sharded_pass(n, chunk, update, kl_weight):
  """n = 37: 10 rows a device, the last holding 7 (3 padding); n = 5: a device of padding."""
  d = jax.local_device_count()
  cfg = _cfg(update, kl_weight, sharded=True, num_examples=n)
  z, bank, idx = _problem(1 if n < 2 * d else 2, n, d=8, lead=(d,), seed=3)
  shards = sharded_bank.split_bank(bank, d)
  unchunked = jax.pmap(lambda z, v, i: sharded_bank.loss_and_transition(
      z, v, i, cfg, num_examples=n, axis_name=AXIS), axis_name=AXIS)(z, shards, idx)
  chunked = jax.pmap(lambda z, v, i: chunked_bank.loss_and_transition(
      z, v, i, cfg, chunk_rows=chunk, axis_name=AXIS), axis_name=AXIS)(z, shards, idx)
  for key in unchunked[0]:
    np.testing.assert_allclose(chunked[0][key], unchunked[0][key], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  np.testing.assert_allclose(chunked[1], unchunked[1], rtol=1e-4, atol=1e-6)
  # Unit rows after a bank step that scales a float32 sum by bank.lr: 1.3e-6 apart on
  # an AMD EPYC host (2026-12-04); a row a chunk missed moves by 1e-2 or more.
  np.testing.assert_allclose(chunked[2], unchunked[2], rtol=1e-5, atol=5e-6)
  np.testing.assert_array_equal(np.asarray(chunked[2]).reshape(-1, 8)[n:], 0.0)  # padding


def test_an_unsupported_objective_is_refused():
  cfg = dataclasses.replace(_cfg("grad", 1.0), kl_direction="p_q")
  z, bank, idx = _problem(2, 10)
  with pytest.raises(ValueError, match="bank.chunk_rows"):
    chunked_bank.loss_and_transition(z, bank, idx, cfg, chunk_rows=4, axis_name=None)


@needs_cifar10
@pytest.mark.parametrize("sharded,update_rule", [
    pytest.param(False, "grad", marks=pytest.mark.extended),
    pytest.param(True, "grad", marks=pytest.mark.slow),
    pytest.param(True, "momentum", marks=pytest.mark.extended)])
def test_chunked_train_step_equals_the_unchunked_step(sharded, update_rule):
  """Three steps of the real pmapped train step on CIFAR-10 images, with and without
  chunks (C = 7 divides neither N nor N / D)."""
  from ssl_jax import builders, steps
  from ssl_jax import data as data_lib
  config = tiny_config(**{"bank.update_rule": update_rule, "bank.sharded": sharded,
                          "bank.fused": True})
  split, model, tx, state0 = setup_training(config)
  n = split.num_examples
  results = {}
  for chunk in (0, 7):
    config.bank.chunk_rows = chunk
    step = jax.pmap(builders.make_train_step(config, model, tx, 20, n), axis_name=AXIS)
    state = builders.place_state(config, state0)
    batches = data_lib.train_batches(split, global_batch=config.batch_size,
                                     num_local_devices=jax.local_device_count(), seed=0, epoch=0)
    for _, batch in zip(range(3), batches):
      state, sums = step(state, {"image": batch["image"], "index": batch["index"]})
    results[chunk] = (builders.host_state(config, state, n), steps.reduce_metrics(sums))
  (ref_state, m_ref), (got, m) = results[0], results[7]
  np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got),
                          jax.tree_util.tree_leaves(ref_state)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))
  assert np.abs(got.bank - np.asarray(state0.bank)).max() > 1e-3


def test_chunk_rows_with_an_unsupported_objective_is_a_config_error():
  from ssl_jax import run_config
  config = tiny_config(**{"bank.chunk_rows": 64, "loss.kl_direction": "p_q"})
  with pytest.raises(run_config.ConfigError, match="bank.chunk_rows"):
    run_config.validate_config(config, 4)
  with pytest.raises(run_config.ConfigError, match="chunk_rows must be >= 0"):
    run_config.validate_config(tiny_config(**{"bank.chunk_rows": -1}), 4)
