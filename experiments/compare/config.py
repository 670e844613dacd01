"""The side-by-side comparison: ours, NPID, SimCLR and BYOL under one config.

    python -m experiments.compare.run --config experiments/compare/config.py:cpu --workdir runs/compare_cpu
    python -m experiments.compare.run --config experiments/compare/config.py:gpu --workdir runs/compare_gpu

At equal compute (every method gets the FLOPs of SimCLR's `budget_epochs`
epochs, and as many epochs as fit them; seeds; `experiments/compare/flops.py`):

    python -m experiments.compare.flops --config experiments/compare/config.py:cpu_flops --workdir runs/compare_cpu_flops
    python -m experiments.compare.flops --config experiments/compare/config.py:gpu_flops --workdir runs/compare_gpu_flops
    python -m experiments.compare.flops --config experiments/compare/config.py:smoke_flops --workdir /tmp/smoke

Every method shares the backbone, data, batch, epochs, augmentation,
optimizer and evaluation; `configs/default.py: set_method` sets the fields
that define each method. Any field can be overridden, e.g.
`--config.base.num_epochs=20`.
"""

import ml_collections

from experiments import sweep


FLOPS_PRESETS = ("cpu_flops", "gpu_flops", "smoke_flops")


def flops_config(preset: str) -> ml_collections.ConfigDict:
  """Equal compute: each method trains for the FLOPs of `budget_method`'s `budget_epochs`."""
  base = sweep.preset_base("gpu" if preset == "gpu_flops" else "cpu")
  base.eval.every_epochs = 2
  seeds, budget_epochs = (0, 1, 2), 10
  if preset == "cpu_flops":
    # The quickstart's data and model, as the cpu preset: SimCLR's 10 epochs
    # take about 14 minutes on 2 CPU cores, so a seed of four methods about an hour.
    base.model.head_hidden = 512
  elif preset == "gpu_flops":
    # All 50,000 images, ResNet-18 bf16, batch 512: sized to fit experiments/gpu.sh.
    seeds, budget_epochs = (0,), 15
    base.eval.every_epochs = 5
  else:
    # Toy sizes for `SMOKE=1 bash experiments/gpu.sh` and its test: seconds on CPU.
    # Two of SimCLR's epochs: BYOL's step (predictor, target network) costs
    # more than SimCLR's, so it gets one.
    seeds, budget_epochs = (0,), 2
    base.data.fraction, base.data.test_fraction = 0.01, 0.02
    base.model.name, base.model.width, base.model.head_hidden = "resnet10", 0.125, 64
    base.batch_size, base.eval.batch_size, base.eval.linear_epochs = 64, 256, 1
    base.eval.every_epochs = 0
    base.log_every_steps = 5
  base.num_epochs = budget_epochs
  config = sweep.experiment_config("compare", preset, base)
  config.seeds = seeds
  config.methods = ("ours", "npid", "simclr", "byol")
  config.budget_method = "simclr"
  config.budget_epochs = budget_epochs
  config.budget = 0.0  # > 0: this many FLOPs instead of budget_method's budget_epochs
  return config


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  if preset in FLOPS_PRESETS:
    return flops_config(preset)
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
