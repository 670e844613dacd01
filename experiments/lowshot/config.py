"""Data efficiency in labels: 1%, 10% and 100% of the labels, with a probe, fine-tuned,
and for a network trained on the labels alone.

    python -m experiments.lowshot.run --config experiments/lowshot/config.py:cpu --workdir runs/lowshot_cpu

At each label fraction f (`config.fractions`), on the quickstart's 5,000 CIFAR-10
training images (2,000 test images):
  - ours and SimCLR pretrained without labels at the comparison's recipe and
    budget (`experiments/compare/config.py:cpu_flops`: the FLOPs of SimCLR's 10
    epochs, as many whole epochs as fit), then
      - a linear probe fit on f of the labels (the run's own few-label
        evaluation, `eval.label_fractions`; 100%: its linear probe), and
      - fine-tuned on f of the labels: the supervised method started from the
        pretrained encoder (`init_from`, `data.label_fraction`);
  - the supervised method from scratch on f of the labels.
The labelled subset is class-balanced and drawn with the run's seed: for one
seed the probe, the fine-tuning and the from-scratch run see the same labels.
Every fine-tuning and from-scratch run takes `finetune_steps` steps of a batch
of min(256, labelled images); seeds 0-2 (a seed's fine-tunes start from that
seed's pretrained runs).
"""

import ml_collections

from experiments.compare import config as compare_config

PRETRAINED = ("ours", "simclr")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  if preset not in ("cpu", "gpu", "smoke"):
    raise ValueError(f"preset must be 'cpu', 'gpu' or 'smoke', got {preset!r}.")
  config = compare_config.flops_config(f"{preset}_flops")
  config.methods = PRETRAINED
  config.fractions = (0.01, 0.1, 1.0) if preset != "smoke" else (0.1, 1.0)
  config.base.eval.label_fractions = tuple(f for f in config.fractions if f < 1.0)
  # Draws 0..2: the report takes, for the run of seed k, the probe on draw k, the
  # subset its fine-tuning (data.label_fraction, drawn with seed k) trains on.
  config.base.eval.lowshot_seeds = max(config.seeds) + 1
  # Fine-tuning (and the supervised runs from scratch): SGD with a cosine schedule
  # over these steps, warmup the first tenth, no weight decay (SimCLR's
  # semi-supervised fine-tuning has none).
  config.finetune_steps = {"cpu": 100, "gpu": 1000, "smoke": 4}[preset]
  config.finetune_lr = 0.05
  config.finetune_batch = int(config.base.batch_size)
  config.results_dir = f"experiments/lowshot/{preset}"
  config.records_dir = f"experiments/lowshot/{preset}/records" if preset == "cpu" else ""
  config.preset = preset
  return config
