"""The bank stored in bfloat16 against float32, same runs otherwise, over 3 seeds.

    python -m experiments.bank_dtype.run --config experiments/bank_dtype/config.py:cpu --workdir runs/bank_dtype_cpu
    python -m experiments.bank_dtype.run --config experiments/bank_dtype/config.py:gpu --workdir runs/bank_dtype_gpu

cpu: the quickstart (configs/quickstart.py: ResNet-18 width 1/4, 5,000
CIFAR-10 images, 12 epochs), about 3 minutes a run on 2 CPU cores, 6 runs.
gpu: configs/cifar10.py (all 50,000 images, chunked bank) for 50 epochs.
`bank.dtype="bfloat16"` halves the bank's memory and checkpoint bytes; the
logits still accumulate in float32 and each update is computed in float32,
then rounded to bf16 (8 bits of mantissa), which is what this measures.
"""

import ml_collections

from experiments import sweep

VARIANTS = (("float32", "bank.dtype=float32"), ("bfloat16", "bank.dtype=bfloat16"))


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  if preset not in ("cpu", "gpu"):
    raise ValueError(f"preset must be 'cpu' or 'gpu', got {preset!r}.")
  base = sweep.preset_base(preset)
  if preset == "gpu":
    base.num_epochs, base.eval.every_epochs = 50, 10
  config = sweep.experiment_config("bank_dtype", preset, base)
  config.seeds = (0, 1, 2)
  config.variants = VARIANTS
  return config
