"""`config.bank.dtype="bfloat16"`: a bf16 bank trains, checkpoints and resumes exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import builders
from ssl_jax import checkpoint
from ssl_jax import data as data_lib
from ssl_jax import devices as devices_lib
from ssl_jax import run_config
from ssl_jax import steps
from tests.helpers import needs_cifar10, setup_training, tiny_config


def _steps(config, state, model, tx, split, devs, start: int, stop: int):
  """Steps [start, stop) of epoch 0 from a host state; returns (host state, metrics).

  A sharded bank is split over the devices and joined again, as the CLI does.
  """
  from ssl_jax import sharded_bank
  p_step = jax.pmap(builders.make_train_step(config, model, tx, total_steps=20,
                                             num_examples=len(split)),
                    axis_name=devices_lib.AXIS, devices=devs)
  bank = np.asarray(state.bank)
  if config.bank.sharded:
    placed = devices_lib.replicate(state.replace(bank=bank[:1]), devs).replace(
        bank=devices_lib.distribute(sharded_bank.split_bank(bank, len(devs)), devs))
  else:
    placed = devices_lib.replicate(state, devs)
  batches = data_lib.train_batches(split, global_batch=config.batch_size,
                                   num_local_devices=len(devs), seed=0, epoch=0,
                                   start_step=start)
  for _, batch in zip(range(stop - start), batches):
    placed, sums = p_step(placed, {"image": batch["image"], "index": batch["index"]})
  host = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), placed)
  if config.bank.sharded:
    return (host.replace(bank=sharded_bank.join_bank(np.asarray(placed.bank), len(split))),
            steps.reduce_metrics(sums))
  for leaf in jax.tree_util.tree_leaves(placed):   # every replica holds the same state
    np.testing.assert_array_equal(leaf[1], leaf[0])
  return host, steps.reduce_metrics(sums)


@needs_cifar10
@pytest.mark.parametrize("overrides", [
    pytest.param({"bank.update_rule": "grad"}, marks=pytest.mark.slow),
    pytest.param({"bank.update_rule": "grad", "bank.chunk_rows": 96},  # 96 does not divide 500
                 marks=pytest.mark.extended),
    pytest.param({"bank.update_rule": "momentum", "bank.sharded": True},
                 marks=pytest.mark.extended),
], ids=["grad", "grad-chunked", "momentum-sharded"])
def test_a_bf16_bank_trains_and_resumes_exactly(overrides, tmp_path):
  config = tiny_config(**{"bank.dtype": "bfloat16", **overrides})
  split, model, tx, state0 = setup_training(config)
  assert state0.bank.dtype == jnp.bfloat16
  devs = jax.local_devices()   # a sharded bank is split over all of them
  straight, metrics = _steps(config, state0, model, tx, split, devs, 0, 6)
  assert np.isfinite(metrics["loss"]) and straight.bank.dtype == jnp.bfloat16
  bank0, bank = np.asarray(state0.bank, np.float32), np.asarray(straight.bank, np.float32)
  # The gradient rule moves every row; the momentum rule the 6 batches' 384 rows.
  moved = np.mean(np.any(bank != bank0, axis=1))
  assert moved > 0.9 if config.bank.update_rule == "grad" else moved == 6 * 64 / len(split)
  # Unit rows to bf16's precision (8 bits of mantissa).
  np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1.0, atol=1e-2)

  # 3 steps, a checkpoint, a restore into a fresh template, 3 more: bit for bit the same.
  first, _ = _steps(config, state0, model, tx, split, devs, 0, 3)
  manager = checkpoint.create_manager(str(tmp_path))
  checkpoint.save(manager, first, wait=True)
  template = builders.initial_state(config, model, tx, len(split))
  restored = checkpoint.restore_latest(manager, template)
  assert restored.bank.dtype == jnp.bfloat16
  resumed, _ = _steps(config, restored, model, tx, split, devs, 3, 6)
  for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(straight)):
    np.testing.assert_array_equal(a, b)


@needs_cifar10
def test_a_float32_checkpoint_is_not_resumed_as_a_bf16_bank(tmp_path):
  config = tiny_config()
  split, model, tx, state0 = setup_training(config)
  manager = checkpoint.create_manager(str(tmp_path))
  checkpoint.save(manager, state0, wait=True)
  bf16 = tiny_config(**{"bank.dtype": "bfloat16"})
  template = builders.initial_state(bf16, model, tx, split.num_examples)
  with pytest.raises(checkpoint.CheckpointError, match="bank: saved .* float32, expected .* bfloat16"):
    checkpoint.restore_latest(manager, template)


def test_an_unknown_bank_dtype_is_refused():
  config = tiny_config(**{"bank.dtype": "float16"})
  with pytest.raises(run_config.ConfigError, match=r"config.bank.dtype must be one of"):
    run_config.validate_config(config, 1)
