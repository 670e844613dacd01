"""The pmapped train step: replica equality, 1- vs 4-device equivalence, one compile."""

import collections

import chex
import jax
import numpy as np
import pytest

from ssl_jax import data as data_lib
from ssl_jax import devices as devices_lib
from ssl_jax import run_config
from ssl_jax import augment
from ssl_jax import builders
from ssl_jax import inputs
from ssl_jax import optim
from ssl_jax import steps
from ssl_jax import train
from tests.helpers import needs_cifar10, setup_training, tiny_config


def _run(config, state, model, tx, split, devices, num_steps):
  step_fn = builders.make_train_step(config, model, tx, 20, split.num_examples,
                                     labels=split.labels)
  # The step compiles once: a second trace (a changed shape, dtype or
  # sharding of the state between steps) fails the run.
  chex.clear_trace_counter()   # counts are kept per source line, across calls of _run
  counted = chex.assert_max_traces(lambda state, batch: step_fn(state, batch), n=1)
  p_step = jax.pmap(counted, axis_name=devices_lib.AXIS, devices=devices)
  state = devices_lib.replicate(state, devices)
  batches = data_lib.train_batches(split, global_batch=config.batch_size,
                                   num_local_devices=len(devices), seed=0, epoch=0)
  for _, batch in zip(range(num_steps), batches):
    state, sums = p_step(state, {"image": batch["image"], "index": batch["index"]})
  return state, steps.reduce_metrics(sums)


@needs_cifar10
@pytest.mark.parametrize("method,update_rule", [
    pytest.param("ours", "grad", marks=pytest.mark.slow),
    pytest.param("ours", "momentum", marks=pytest.mark.extended),
    pytest.param("simclr", None, marks=pytest.mark.slow),
    pytest.param("byol", None, marks=pytest.mark.extended)])
def test_four_devices_match_one_device_and_replicas_stay_equal(method, update_rule):
  config = tiny_config(method=method)
  if update_rule:
    config.bank.update_rule = update_rule
  split, model, tx, state0 = setup_training(config)
  devices = jax.local_devices()
  assert len(devices) == 4
  s4, m4 = _run(config, state0, model, tx, split, devices, 4)
  s1, m1 = _run(config, state0, model, tx, split, devices[:1], 4)
  replica = lambda tree, r: jax.tree_util.tree_map(lambda x: np.asarray(x[r]), tree)
  for r in range(1, 4):
    chex.assert_trees_all_equal(replica(s4, r), replica(s4, 0))
  chex.assert_trees_all_close(replica(s4, 0), replica(s1, 0), rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
  # The run did something: the params (and the bank, or BYOL's target) moved.
  moved = lambda a, b: max(np.abs(np.asarray(x[0]) - np.asarray(y)).max()
                           for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  assert moved(s4.params, state0.params) > 1e-4
  assert int(s4.step[0]) == 4
  if method == "ours":
    assert moved(s4.bank, state0.bank) > 1e-3
    np.testing.assert_allclose(np.linalg.norm(s4.bank[0], axis=1), 1.0, rtol=1e-5)
  if method == "byol":
    assert moved(s4.extra, state0.extra) > 1e-6


@needs_cifar10
def test_host_augmentation_gives_the_same_step_as_on_device():
  config = tiny_config()
  split, model, tx, state = setup_training(config)
  aug_cfg = builders.augment_config(config)
  batch = next(data_lib.train_batches(split, global_batch=64, num_local_devices=1, seed=0,
                                      epoch=0))
  batch = {"image": batch["image"], "index": batch["index"]}
  host = builders.make_host_augment(aug_cfg, np.asarray(state.rng))(batch, 0)
  assert host["image"].dtype == np.float32 and host["image"].shape == (1, 64, 32, 32, 3)
  on_device = jax.pmap(lambda b, rng: augment.augment_batch(
      steps.step_key(rng, 0), b["image"], b["index"], aug_cfg), in_axes=(0, None),
      devices=jax.local_devices()[:1])(batch, state.rng)
  np.testing.assert_allclose(host["image"], on_device, atol=1e-5)


@needs_cifar10
@pytest.mark.parametrize("overrides", [
    pytest.param({"model.dtype": "bfloat16"}, marks=pytest.mark.extended),
    pytest.param({"optim.name": "lars"}, marks=pytest.mark.extended),
    pytest.param({"loss.kl_direction": "p_q", "loss.kl_stop_gradient": False,
                  "bank.init": "random"}, marks=pytest.mark.extended),
    pytest.param({"bank.calibrate_bn": "inference", "augment.blur_prob": 0.5},
                 marks=pytest.mark.extended),
])
def test_step_options_run_and_move_the_state(overrides):
  config = tiny_config(**overrides)
  split, model, tx, state0 = setup_training(config)
  devices = jax.local_devices()
  s, m = _run(config, state0, model, tx, split, devices, 2)
  assert np.isfinite(m["loss"]) and m["nonfinite"] == 0
  moved = [np.abs(np.asarray(a[0], np.float32) - np.asarray(b, np.float32)).max()
           for a, b in zip(jax.tree_util.tree_leaves(s.params),
                           jax.tree_util.tree_leaves(state0.params))]
  assert max(moved) > 1e-4
  np.testing.assert_allclose(np.linalg.norm(s.bank[0], axis=1), 1.0, rtol=1e-5)


def test_resident_rows_gather_each_process_its_own_instances():
  """data.on_device with several processes: unequal shares pad to one shape, and
  every step gathers, on each device, exactly the instances of its index table."""
  n, nd, batch = 505, jax.local_device_count(), 64  # 2 shards of 252 and 253 rows
  num_steps = data_lib.steps_per_epoch(n, batch, 2)
  step_state = collections.namedtuple("StepState", "step")
  p_step = jax.pmap(steps.make_indexed_step(lambda state, b: b, num_steps),
                    axis_name=devices_lib.AXIS)
  for process in (0, 1):
    layout = data_lib.Layout(n, num_shards=2, process_index=process, process_count=2)
    ids = np.arange(*layout.local_bounds)
    # Instance i's pixels spell i, so a gathered image names the row it came from.
    images = np.zeros((len(ids), 2, 2, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = ids // 256, ids % 256
    split = data_lib.Split(images, np.zeros(len(ids), np.int32), ("a",), layout=layout)
    resident = inputs.resident_split(split)
    assert resident.shape == (nd, 253, 2, 2, 3)
    table = np.swapaxes(data_lib.epoch_indices(layout, global_batch=batch, num_local_devices=nd,
                                               seed=0, epoch=3), 0, 1)  # [D, steps, b]
    placed = devices_lib.place({"index": table, "row": table - np.int32(split.offset)})
    for t in range(num_steps):
      out = p_step(step_state(np.full(nd, t, np.int32)), placed, resident)
      got = np.asarray(out["image"][..., 0, 0, 0], np.int64) * 256 + np.asarray(
          out["image"][..., 0, 0, 1])
      np.testing.assert_array_equal(got, table[:, t])
      np.testing.assert_array_equal(out["index"], table[:, t])
    assert np.all((table >= ids[0]) & (table <= ids[-1]))


@needs_cifar10
def test_device_resident_data_too_large_for_the_device_is_refused(tmp_path, monkeypatch):
  # 500 images of 32 x 32 x 3 bytes (1.5 MB) against a device said to have 2 MB.
  monkeypatch.setattr(devices_lib, "memory_limit_bytes", lambda: 2_000_000)
  with pytest.raises(run_config.ConfigError,
                     match=r"would keep 1\.5 MiB .* than 50% of its 1\.9 MiB"):
    train.train_and_evaluate(tiny_config(**{"data.on_device": True}), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()  # refused before anything was built
  monkeypatch.setattr(devices_lib, "memory_limit_bytes", lambda: 4_000_000)
  inputs.check_resident_fits(builders.load_data(tiny_config(), lambda *a: None)[0])
