"""The side-by-side comparison: ours, NPID, SimCLR and BYOL under one config.

    python -m experiments.compare.run --config experiments/compare/config.py:cpu --workdir runs/compare_cpu
    python -m experiments.compare.run --config experiments/compare/config.py:gpu --workdir runs/compare_gpu

Every method shares the backbone, data, batch, epochs, augmentation,
optimizer and evaluation; `configs/default.py: set_method` sets the fields
that define each method. Any field can be overridden, e.g.
`--config.base.num_epochs=20`.
"""

import ml_collections

from experiments import sweep


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  base = sweep.preset_base(preset)
  if preset == "cpu":
    # A 2-core CPU finishes all four in about 30 minutes.
    base.num_epochs = 10
    base.eval.every_epochs = 2
    base.model.head_hidden = 512
  else:
    # ResNet-18 on the full CIFAR-10 train set, for one GPU.
    base.num_epochs = 100
    base.eval.every_epochs = 10
  config = ml_collections.ConfigDict()
  config.base = base
  config.methods = ("ours", "npid", "simclr", "byol")
  config.results_dir = f"experiments/compare/{preset}"
  config.preset = preset
  return config
