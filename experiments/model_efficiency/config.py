"""Model efficiency: the four methods on backbones of increasing size.

    python -m experiments.model_efficiency.run --config experiments/model_efficiency/config.py:cpu --workdir runs/model_cpu
    python -m experiments.model_efficiency.run --config experiments/model_efficiency/config.py:cpu_wide --workdir runs/model_cpu
    python -m experiments.model_efficiency.run --config experiments/model_efficiency/config.py:gpu --workdir runs/model_gpu
    python -m experiments.model_efficiency.arch --config experiments/model_efficiency/config.py:arch --workdir runs/model_arch

Same data, batch and epochs for every backbone; the table and plot put the
final kNN and linear top-1 against the backbone's parameter count and
against the training seconds. Any field can be overridden, e.g.
`--config.seeds=(0,)`.
"""

import ml_collections

from experiments import sweep

METHODS = ("ours", "npid", "simclr", "byol")


def variant_name(method: str, model: str, width: float) -> str:
  return f"{method}-{model}-w{width:g}"


def variants(config: ml_collections.ConfigDict) -> tuple:
  """(name, overrides) for every method x (model name, width) of config.backbones."""
  return tuple((variant_name(m, name, width), f"method={m} model.name={name} model.width={width}")
               for m in config.methods for name, width in config.backbones)


PRESETS = ("cpu", "cpu_wide", "gpu", "arch")


def arch_config() -> ml_collections.ConfigDict:
  """Across architectures at equal training FLOPs (`experiments/model_efficiency/arch.py`).

  The quickstart's data, as experiments/compare's cpu_flops preset, whose
  budget it shares: SimCLR's 10 epochs on ResNet-18 at width 1/4. Three
  backbones of about the same forward cost on 32 px images (XLA's count:
  61.8, 59.3 and 64.4 MFLOP per image): ResNet-18 at width 1/4, MobileNetV2
  at width 1/2 (CIFAR stem) and ViT-Ti at width 1/4 with 4 px patches.
  Each backbone trains with the optimizer its registry entry names
  (`models.Backbone.optim`: AdamW for the ViT), everything else shared.
  About 30 minutes per backbone and seed on 2 CPU cores.
  """
  base = sweep.preset_base("cpu")
  base.model.head_hidden = 512
  base.eval.every_epochs = 2
  base.num_epochs = 10
  config = sweep.experiment_config("model_efficiency", "arch", base)
  config.seeds = (0, 1, 2)
  config.methods = ("ours", "simclr", "byol")
  config.backbones = (("resnet18", 0.25), ("mobilenet_v2", 0.5), ("vit_tiny", 0.25))
  config.budget_method = "simclr"   # on base's backbone (ResNet-18 w1/4)
  config.budget_epochs = 10
  config.budget = 0.0  # > 0: this many FLOPs instead of budget_method's budget_epochs
  # 27 runs, more than one sitting: each finished run's record is committed.
  config.records_dir = f"{config.results_dir}/records"
  return config


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  if preset == "arch":
    return arch_config()
  if preset not in PRESETS:
    raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}.")
  cpu = preset.startswith("cpu")
  base = sweep.preset_base("cpu" if cpu else preset)
  if cpu:
    # 5,000 CIFAR-10 images, 10 epochs; ResNet-18 at widths 1/8 and 1/4 (4x
    # the parameters). At width 1/4 the four methods take about 6 + 6 + 14 +
    # 15 minutes on 2 CPU cores (experiments/compare/cpu), so about an hour per
    # seed.
    base.num_epochs = 10
    base.model.head_hidden = 512
    backbones = (("resnet18", 0.125), ("resnet18", 0.25))
    if preset == "cpu_wide":
      # The cpu preset plus width 1/2 (another 4x the parameters). Its steps
      # are about 2.7x slower than width 1/4's (benchmarks/results/cpu.md),
      # nearly two hours more per seed. Run it in the cpu preset's workdir:
      # the w1/8 and w1/4 runs are the same runs and are reused.
      backbones += (("resnet18", 0.5),)
  else:
    # All 50,000 images, 100 epochs; ResNet-18 at widths 1/4, 1/2, 1, and ResNet-50.
    base.num_epochs = 100
    backbones = (("resnet18", 0.25), ("resnet18", 0.5), ("resnet18", 1.0), ("resnet50", 1.0))
  base.eval.every_epochs = 0
  config = sweep.experiment_config("model_efficiency", preset, base)
  # The runner builds the variants (method x backbone) from these two.
  config.methods = METHODS
  config.backbones = backbones
  return config
