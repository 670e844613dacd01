"""Data efficiency: the four methods on fixed seeded fractions of CIFAR-10's train split.

    python -m experiments.data_efficiency.run --config experiments/data_efficiency/config.py:cpu --workdir runs/data_cpu
    python -m experiments.data_efficiency.run --config experiments/data_efficiency/config.py:gpu --workdir runs/data_gpu

Every run takes the same number of optimizer steps (`config.steps`): a run on
a tenth of the images trains ten times as many epochs, so the fractions
differ in data, not in compute. The kNN bank and the linear probe's training
set are the labelled subset the network trained on; the test set is the whole
test split. Any field can be overridden, e.g. `--config.seeds=(0,)`.
"""

import math

import ml_collections

from experiments import sweep
from ssl_jax import data as data_lib

METHODS = ("ours", "npid", "simclr", "byol")
CIFAR10_TRAIN = 50_000


def variant_name(method: str, fraction: float, bank_lr_scale: float = 1.0) -> str:
  suffix = "" if bank_lr_scale == 1.0 else f"-banklr{bank_lr_scale:g}"
  return f"{method}-f{fraction:g}{suffix}"


def rows(config: ml_collections.ConfigDict) -> tuple:
  """(method, bank lr scale) table rows: every method at x1, `ours` also at the other scales.

  The scales multiply the gradient rule's bank step (`bank.lr`), so only the
  method that uses it (`ours`) gets them.
  """
  scales = tuple(dict.fromkeys((1.0,) + tuple(float(x) for x in config.bank_lr_scales)))
  return tuple((m, x) for m in config.methods for x in scales if x == 1.0 or m == "ours")


def variants(config: ml_collections.ConfigDict) -> tuple:
  """(name, overrides) for every row x fraction, each trained for config.steps steps.

  Epochs per fraction assume CIFAR-10's (and CIFAR-100's) 50,000 train images.
  """
  out = []
  batch_size, steps = config.base.batch_size, config.steps
  for method, scale in rows(config):
    for f in config.fractions:
      num_examples = len(data_lib.subset_positions(CIFAR10_TRAIN, f, 0))
      steps_per_epoch = data_lib.steps_per_epoch(num_examples, batch_size)
      if steps_per_epoch < 1:
        raise ValueError(f"fraction {f} holds fewer than one batch of {batch_size} images.")
      epochs = math.ceil(steps / steps_per_epoch)
      # Warmup and checkpoints by steps too, not epochs (an epoch of 1% is one step).
      warmup = max(1, round(config.warmup_steps / steps_per_epoch))
      bank_lr = "" if scale == 1.0 else f" bank.lr={config.base.bank.lr * scale:g}"
      out.append((variant_name(method, f, scale),
                  f"method={method} data.fraction={f} num_epochs={epochs} "
                  f"optim.warmup_epochs={warmup} checkpoint_every_epochs={max(1, epochs // 10)}"
                  + bank_lr))
  return tuple(out)


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  base = sweep.preset_base(preset)
  if preset == "cpu":
    # ResNet-18 width 1/4, 500 and 5,000 images (1% and 10% of CIFAR-10),
    # 190 steps of 256 (10 epochs of the 5,000), warmup 19 steps. Each run
    # costs what one of the comparison's CPU runs does: about 6 minutes for
    # ours and npid, 14 for the two-view simclr and byol on 2 cores, so about
    # 80 minutes per seed. Two fractions, the ends of a 10x range, are what
    # fits one working session for 2 seeds; add more with
    # --config.fractions='(0.01,0.025,0.05,0.1)' (finished runs are reused).
    base.model.head_hidden = 512
    fractions, steps, warmup_steps = (0.01, 0.1), 190, 19
  else:
    # ResNet-18 (bf16), 10% to 100% of CIFAR-10, 9,700 steps of 512 (100 epochs of
    # the whole), warmup 485 steps (5 epochs of the whole).
    fractions, steps, warmup_steps = (0.1, 0.25, 0.5, 1.0), 9_700, 485
  base.data.test_fraction = 1.0   # always the whole test split
  base.eval.every_epochs = 0      # epochs differ per fraction: evaluate at the end only
  config = sweep.experiment_config("data_efficiency", preset, base)
  # The runner builds the variants (method x fraction) from these four.
  config.methods = METHODS
  config.fractions = fractions
  config.steps = steps
  config.warmup_steps = warmup_steps
  # Extra rows of `ours` with its bank step scaled, e.g. (0.25,): at 1% the
  # bank has 500 rows, and each step's push on the rows that are not the
  # positives, about lr / (B tau) * B / N per row, is 100x what it is at 100%.
  config.bank_lr_scales = ()
  return config
