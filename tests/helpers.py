"""Shared test fixtures: tiny configs on the real CIFAR-10 JPEG archive."""

import os

import pytest

from configs import default, quickstart

CIFAR10 = default.SHARED_CIFAR10

needs_cifar10 = pytest.mark.skipif(
    not os.path.exists(CIFAR10), reason=f"{CIFAR10} (the shared CIFAR-10 archive) is absent")


def tiny_config(method="ours", **overrides):
  """Quickstart shrunk to seconds: a ResNet-10 of width 1/8 on 1% of CIFAR-10."""
  config = quickstart.get_config(method)
  config.unlock()
  config.data.source = f"folder:{CIFAR10}"
  config.data.fraction = 0.01       # 500 images
  config.data.test_fraction = 0.02  # 200 images
  config.model.name = "resnet10"
  config.model.width = 0.125
  config.batch_size = 64
  config.num_epochs = 1
  config.eval.batch_size = 256
  config.eval.linear_epochs = 2
  config.model.head_hidden = 64
  config.log_every_steps = 1
  for key, value in overrides.items():
    node = config
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return config


def setup_training(config):
  """(train split, model, optimizer, host state with the initial bank) of a config."""
  from ssl_jax import builders, data as data_lib, optim  # heavy: only where used
  train_split, _, _ = builders.load_data(config, log=lambda *a: None)
  model = builders.build_model(config)
  spe = data_lib.steps_per_epoch(train_split.num_examples, config.batch_size)
  tx = optim.create_optimizer(config.optim, optim.learning_rate_schedule(
      config.optim, config.batch_size, spe, config.num_epochs))
  state = builders.init_bank(config, builders.initial_state(config, model, tx,
                                                      train_split.num_examples),
                          train_split, log=lambda *a: None)
  return train_split, model, tx, state
