"""The training configs experiments start from, and the experiment config's common fields."""

from __future__ import annotations

import ml_collections


def preset_base(preset: str) -> ml_collections.ConfigDict:
  """The unlocked training config a preset starts from.

  cpu: configs/quickstart.py (ResNet-18 width 1/4, 5,000 CIFAR-10 images,
  batch 256); gpu: configs/cifar10.py (ResNet-18 bf16, all 50,000, batch 512).
  """
  from configs import cifar10, quickstart
  if preset == "cpu":
    base = quickstart.get_config()
  elif preset == "gpu":
    base = cifar10.get_config()
  else:
    raise ValueError(f"preset must be 'cpu' or 'gpu', got {preset!r}.")
  base.unlock()
  return base


def experiment_config(name: str, preset: str,
                      base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An experiment config: base, seeds (0, 1), only_finished, results_dir, records_dir, preset."""
  config = ml_collections.ConfigDict()
  config.base = base
  config.seeds = (0, 1)
  # True: report the finished runs, train nothing (a look while the sweep runs).
  config.only_finished = False
  config.results_dir = f"experiments/{name}/{preset}"
  # Non-empty: keep each finished run's config and summary there, to be
  # committed, so a sweep longer than one sitting resumes in a fresh checkout
  # (experiments/sweep/runs.py).
  config.records_dir = ""
  config.preset = preset
  return config
