"""FLOP budgets: a run planned to config.train_flops takes the epochs that fit, every
schedule planned over them, the same plan on resume."""

import json

import pytest

from ssl_jax import compute
from ssl_jax.run_config import ConfigError
from tests.helpers import needs_cifar10, tiny_config


@pytest.fixture(scope="module")
def split():
  from ssl_jax import builders
  train, _, _ = builders.load_data(tiny_config(), log=lambda *a: None)
  return train


@needs_cifar10
def test_a_budget_takes_the_whole_epochs_that_fit_and_is_kept_for_resume(split, tmp_path):
  config = tiny_config()
  spe = 7
  per_step = compute.step_flops(config, split, spe)
  assert per_step > 1e6
  lines = []
  for sub in "bcd":
    (tmp_path / sub).mkdir()
  config.train_flops = 3.5 * per_step * spe
  planned, plan = compute.plan(config, split, spe, str(tmp_path), log=lines.append)
  assert planned.num_epochs == plan["epochs"] == 3 and config.num_epochs == 1  # a copy
  assert plan["train_flops"] == pytest.approx(3 * per_step * spe)
  assert plan["flops_per_image"] == pytest.approx(per_step / config.batch_size)
  assert json.loads((tmp_path / compute.PLAN_FILE).read_text()) == plan
  # Exactly k epochs' worth gives k epochs (no rounding down to k - 1).
  config.train_flops = 2 * per_step * spe
  assert compute.plan(config, split, spe, str(tmp_path / "b"), log=lines.append)[1]["epochs"] == 2
  # A resumed run reads its plan, whatever this device would count now.
  config.train_flops = 3.5 * per_step * spe
  (tmp_path / compute.PLAN_FILE).write_text(json.dumps({**plan, "flops_per_step": per_step / 2}))
  assert compute.plan(config, split, spe, str(tmp_path), log=lines.append)[1]["epochs"] == 7
  config.train_flops = 0.5 * per_step * spe
  with pytest.raises(ConfigError, match="does not cover one epoch"):
    compute.plan(config, split, spe, str(tmp_path / "c"), log=lines.append)
  config.train_flops = 0.0
  assert compute.plan(config, split, spe, str(tmp_path / "d")) == (config, {})


@needs_cifar10
def test_the_schedule_is_planned_over_the_budgeted_epochs(split, tmp_path):
  """The cosine schedule of a 2-epoch budget (asked: 1 epoch) spans both epochs: mid-way
  after the first, ended after the second. (tests/test_gpu_script.py trains such runs.)"""
  from ssl_jax import builders
  config = tiny_config()
  spe = 7
  config.train_flops = 2 * compute.step_flops(config, split, spe) * spe
  planned, _ = compute.plan(config, split, spe, str(tmp_path), log=lambda *a: None)
  schedule, _ = builders.build_optimizer(planned, spe)
  peak = max(float(schedule(s)) for s in range(15))
  assert float(schedule(7)) > 0.3 * peak and float(schedule(14)) < 0.05 * peak
  asked, _ = builders.build_optimizer(config, spe)
  assert float(asked(7)) < 0.05 * peak  # what num_epochs=1 would have run


@needs_cifar10
@pytest.mark.parametrize("method,sharded", [("simclr", False), ("ours", True)])
def test_the_cpu_count_equals_the_pmapped_programs_count(split, method, sharded):
  """`counted_flops` (the step vmapped over the devices, lowered for the CPU: the
  count every device kind plans with) equals D times pmap's count of one device's
  lowered program, here where XLA:CPU counts both. SimCLR gathers its negatives and
  a sharded bank its logits over the devices, so an axis of the wrong size shows."""
  import jax
  from ssl_jax import builders, data as data_lib, devices
  config = tiny_config()
  config.method = method
  config.bank.sharded = sharded
  nd = jax.local_device_count()
  assert nd == 4
  model = builders.build_model(config)
  _, tx = builders.build_optimizer(config, 7)
  state = compute.abstract_state(config, model, tx, split.num_examples, nd, nd)
  batch = next(data_lib.train_batches(split, global_batch=int(config.batch_size),
                                      num_local_devices=nd, seed=0, epoch=0))
  inputs = {k: jax.ShapeDtypeStruct(batch[k].shape, batch[k].dtype) for k in ("image", "index")}
  step_fn = builders.make_train_step(config, model, tx, 7, split.num_examples)
  per_device = compute.model_flops(jax.pmap(step_fn, axis_name=devices.AXIS).lower(state, inputs))
  assert compute.counted_flops(step_fn, state, inputs) == pytest.approx(nd * per_device, rel=2e-3)
  assert compute.step_flops(config, split, 7) == pytest.approx(nd * per_device, rel=2e-3)
