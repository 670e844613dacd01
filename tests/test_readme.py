"""The README's code examples run as written."""

import pathlib
import re

import numpy as np
import pytest

from tests.helpers import needs_cifar10, setup_training, tiny_config

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_loss_example_runs(capsys):
  block = next(b for b in _python_blocks() if "loss after 20 steps" in b)
  namespace = {}
  exec(compile(block, str(README), "exec"), namespace)
  assert "loss after 20 steps" in capsys.readouterr().out
  bank = np.asarray(namespace["bank"])
  np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1.0, rtol=1e-5)
  assert np.isfinite(float(namespace["loss"]))


@pytest.mark.slow
@needs_cifar10
def test_readme_add_a_method_example_registers_a_method_that_trains():
  """The toy method of "Add a method" goes through the registry alone: config,
  validation, state, pmapped steps."""
  import jax
  from configs import default
  from ssl_jax import builders, devices, methods, run_config, steps
  block = next(b for b in _python_blocks() if "methods.register" in b)
  try:
    exec(compile(block, str(README), "exec"), {})
    assert "align" in methods.names()
    config = tiny_config()
    default.set_method(config, "align")
    run_config.validate_config(config, jax.local_device_count())
    split, model, tx, state = setup_training(config)
    assert state.bank.shape[0] == 1    # no bank: the placeholder
    p_step = jax.pmap(builders.make_train_step(config, model, tx, 10, len(split)),
                      axis_name=devices.AXIS)
    placed = builders.place_state(config, state)
    losses = []
    for batch in list(_batches(split, config))[:3]:
      placed, sums = p_step(placed, batch)
      losses.append(steps.reduce_metrics(sums)["loss"])
    assert np.all(np.isfinite(losses)), losses
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()),
                                   devices.unreplicate(placed.params), state.params)
    assert max(jax.tree_util.tree_leaves(moved)) > 0   # the optimizer applied its loss
    assert int(devices.unreplicate(placed.step)) == 3
  finally:
    methods.unregister("align")
  assert "align" not in methods.names()


def _batches(split, config):
  import jax
  from ssl_jax import data as data_lib
  return ({"image": b["image"], "index": b["index"]} for b in data_lib.train_batches(
      split, global_batch=config.batch_size, num_local_devices=jax.local_device_count(),
      seed=0, epoch=0))
