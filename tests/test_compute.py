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
def test_a_two_view_step_costs_about_twice_a_single_view_step(split):
  from configs import default
  ours = compute.step_flops(tiny_config(), split, 7)
  simclr = compute.step_flops(default.set_method(tiny_config(), "simclr"), split, 7)
  # Two encoder passes per image (plus SimCLR's MLP head): at the same budget
  # the single-branch method gets about twice the epochs.
  assert 1.7 < simclr / ours < 2.6, simclr / ours


@needs_cifar10
def test_the_schedule_is_planned_over_the_budgeted_epochs(tmp_path):
  from ssl_jax import train
  config = tiny_config(**{"eval.linear_epochs": 1})
  spe = 7
  from ssl_jax import builders
  split, _, _ = builders.load_data(config, log=lambda *a: None)
  config.train_flops = 2 * compute.step_flops(config, split, spe) * spe
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["epochs"] == 2 and len(summary["history"]) == 2
  assert summary["train_flops"] == pytest.approx(config.train_flops)
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  lr = {r["step"]: r["lr"] for r in records if "lr" in r}
  # The cosine schedule spans both epochs: mid-way at the end of the first (a
  # schedule planned over config.num_epochs=1 would be at 0 there), ended by the last.
  assert lr[7] > 0.3 * max(lr.values()) and lr[14] < 0.05 * max(lr.values()), lr
  assert json.loads((tmp_path / "config.json").read_text())["num_epochs"] == 1  # as asked
