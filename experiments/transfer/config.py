"""Transfer to classes never seen in pretraining: pretrain on CIFAR-10's classes 0-4,
evaluate the encoder on classes 5-9.

    python -m experiments.transfer.run --config experiments/transfer/config.py:cpu --workdir runs/transfer_cpu
    python -m experiments.transfer.run --config experiments/transfer/config.py:gpu --workdir runs/transfer_gpu

The run module first writes two class-folder trees from the shared archive
under `config.data_root`: `seen` (airplane, automobile, bird, cat, deer) and
`unseen` (dog, frog, horse, ship, truck), each `train/<class>/` and
`test/<class>/` with the first `train_per_class` and `test_per_class` images of
each class in the archive (1,000 and 400: the quickstart's 5,000 training and
2,000 test images). Every method trains on `seen` at the comparison's recipe
and budget (`experiments/compare/config.py:cpu_flops`: the quickstart's
ResNet-18 width 1/4, each run the FLOPs of SimCLR's 10 epochs, as many whole
epochs as fit): ours, SimCLR, NPID, BYOL, and the supervised reference trained
on the seen classes' labels. Then each trained encoder is evaluated on
`unseen` (`python -m ssl_jax.evaluate --train_data ... --test_data ...`): kNN
and linear top-1 fit on its training images, and the 10-shot probe
(`eval.shots_per_class=(10,)`, 3 draws). Seeds 0-2.
"""

import ml_collections

from configs import default
from experiments.compare import config as compare_config

SEEN = ("airplane", "automobile", "bird", "cat", "deer")        # CIFAR-10 classes 0-4
UNSEEN = ("dog", "frog", "horse", "ship", "truck")              # classes 5-9
METHODS = ("ours", "simclr", "npid", "byol", "supervised")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  if preset not in ("cpu", "gpu", "smoke"):
    raise ValueError(f"preset must be 'cpu', 'gpu' or 'smoke', got {preset!r}.")
  config = compare_config.flops_config(f"{preset}_flops")
  base = config.base
  base.data.fraction = 1.0          # the prepared folders hold the quickstart's sizes
  base.data.test_fraction = 1.0
  base.eval.shots_per_class = (10,)
  base.eval.lowshot_seeds = 3
  config.methods = METHODS
  config.archive = default.SHARED_CIFAR10
  config.data_root = "runs/transfer_data"   # where the two class-folder trees are written
  # cpu: the quickstart's 5,000 and 2,000 images; gpu: all of CIFAR-10 (one seed, the
  # comparison's gpu_flops recipe); smoke: seconds, for its test.
  config.train_per_class, config.test_per_class = {
      "cpu": (1000, 400), "gpu": (5000, 1000), "smoke": (20, 10)}[preset]
  config.results_dir = f"experiments/transfer/{preset}"
  config.records_dir = f"experiments/transfer/{preset}/records" if preset == "cpu" else ""
  config.preset = preset
  return config
