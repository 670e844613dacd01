"""Bad configs fail before any data is read or code compiled, naming the field."""

import pathlib
import subprocess
import sys

import pytest

from configs import cifar10, default, imagenet, quickstart
from ssl_jax import run_config
from tests.helpers import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("field,value,message", [
    ("method", "simsiam", "config.method must be one of ['ours', 'npid', 'simclr', 'byol', 'supervised']"),
    ("bank.update_rule", "ema", "config.bank.update_rule must be one of ['grad', 'momentum']"),
    ("bank.init", "zeros", "config.bank.init must be one of"),
    ("loss.temperature", 0.0, "config.loss.temperature must be > 0"),
    ("loss.kl_direction", "pq", "config.loss.kl_direction must be one of"),
    ("data.fraction", 0.0, "config.data.fraction must be in (0, 1]"),
    ("data.fraction", 1.5, "config.data.fraction must be in (0, 1]"),
    ("data.source", "cifar10", "config.data.source must be 'folder:<path>' or 'tfds:<name>'"),
    ("batch_size", 30, "config.batch_size (30) must be a positive multiple of the device count (4)"),
    ("model.name", "vit", "config.model.name must be one of"),
    ("optim.name", "adam", "config.optim.name must be one of"),
    ("data.shards", -1, "config.data.shards (-1) must be 0 (one shard per process)"),
    ("data.shards", 3, "config.batch_size (64) must be a multiple of the number of data shards (3)"),
    ("eval.knn_source", "train", "config.eval.knn_source must be one of ['embed', 'bank']"),
])
def test_validate_config_names_the_field(field, value, message):
  config = tiny_config()
  *path, leaf = field.split(".")
  node = config
  for p in path:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                     .replace("[", r"\[").replace("]", r"\]")):
    run_config.validate_config(config, num_devices=4)


def test_streaming_and_bank_knn_options_are_checked():
  for overrides, message in [
      ({"data.stream": True, "data.on_device": True}, "data.stream=True streams to the device"),
      ({"data.stream": True, "augment.on_device": False}, "data.stream=True streams to the device"),
      ({"data.stream": True, "data.workers": -2}, "config.data.workers must be >= 0, or -1"),
      ({"data.prefetch": 0}, "config.data.prefetch must be >= 1"),
      ({"method": "simclr", "eval.knn_source": "bank"}, "knn_source='bank' needs a method with a"),
  ]:
    config = tiny_config(**{k: v for k, v in overrides.items() if k != "method"})
    if "method" in overrides:
      default.set_method(config, overrides["method"])
    with pytest.raises(ValueError, match=message):
      run_config.validate_config(config, num_devices=4)


def test_shipped_configs_are_valid():
  for module in (cifar10, quickstart, imagenet):
    for method in ("ours", "npid", "simclr", "byol"):
      config = module.get_config(method)
      assert config.method == method
      run_config.validate_config(config, num_devices=1)


def test_a_bank_step_off_the_configs_rule_gets_a_note():
  for module in (cifar10, quickstart):  # the shipped configs follow B * tau / 2
    for method in ("ours", "npid", "simclr", "byol"):
      assert run_config.bank_lr_note(module.get_config(method)) is None
  config = quickstart.get_config()  # batch 256, tau 0.1, bank.lr 12.8
  config.unlock()
  config.batch_size = 64  # alone: the same bank.lr is now 4x the rule's 3.2
  note = run_config.bank_lr_note(config)
  assert note.startswith("note: bank.lr = 12.8 is 4x the configs' rule B * tau / 2 = 3.2 ")
  assert note.endswith("--config.bank.lr=3.2 follows it.")
  config.bank.lr = 4.0  # 1.25x: close enough
  assert run_config.bank_lr_note(config) is None
  config.bank.lr = 1.0  # 0.31x
  assert "0.31x" in run_config.bank_lr_note(config)
  config.bank.update_rule = "momentum"  # bank.lr unused
  assert run_config.bank_lr_note(config) is None


def test_cli_prints_one_line_and_exits_nonzero(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "ssl_jax.main", "--config", "configs/quickstart.py",
       "--workdir", str(tmp_path), "--config.loss.temperature=-1"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 1
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert errors == ["error: config.loss.temperature must be > 0, got -1.0."]
  assert "Traceback" not in proc.stderr
