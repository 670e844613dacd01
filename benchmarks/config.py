"""Benchmark grid: which steps, banks and pipelines `benchmarks/run.py` measures.

    python -m benchmarks.run --config benchmarks/config.py:cpu
    python -m benchmarks.run --config benchmarks/config.py:gpu
    python -m benchmarks.run --config benchmarks/config.py:cpu_backbones   (the backbone axis)
    python -m benchmarks.run --config benchmarks/config.py:gpu_core   (experiments/gpu.sh)
    python -m benchmarks.run --config benchmarks/config.py:smoke      (toy sizes)

Every field can be overridden, e.g. `--config.bank_sizes=(10000,)`.
"""

import ml_collections

ALL = ("ours", "npid", "simclr", "byol")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.bank_rows = 50_000          # N of the train-step benchmarks (CIFAR-10)
  c.bank_dim = 128
  c.bank_batch = 512            # B of the bank-cost benchmark
  c.pipeline_decode_images = 2_000  # JPEGs decoded for the decode rate
  c.pipeline_batch = 512
  if preset == "cpu":
    # A 2-core CPU finishes this in about 10 minutes.
    # (model, width, batch, methods, augmentation included?) rows of the step grid.
    c.grid = (("resnet18", 0.25, 128, ALL, (True, False)),
              ("resnet18", 0.5, 128, ALL, (True, False)))
    c.dtype = "float32"         # bf16 matmuls are emulated (slow) on CPU
    c.warmup_steps = 1
    c.timed_steps = 3
    c.matmul_size = 2048
    c.bank_sizes = (10_000, 100_000, 1_281_167)
    c.bank_memory_limit_gb = 12.0  # of the machine's 24 GiB
    c.epoch_images = 5_000      # on-device vs streaming: images in the timed epoch
  elif preset == "gpu":
    # One GPU, in well under 8 minutes.
    # Every compile costs 10-40 s: the full grid at the target setting only.
    c.grid = (("resnet18", 1.0, 512, ALL, (True, False)),
              ("resnet18", 1.0, 256, ("ours", "simclr"), (True,)),
              ("resnet18", 1.0, 1024, ("ours", "simclr"), (True,)),
              ("resnet50", 1.0, 512, ("ours", "simclr"), (True,)),
              # The backbone axis at full width: 32 px images, ViTs with 4 px patches.
              ("mobilenet_v2", 1.0, 512, ("ours", "simclr"), (True,)),
              ("vit_small", 1.0, 512, ("ours", "simclr"), (True,)))
    c.dtype = "bfloat16"
    c.warmup_steps = 3
    c.timed_steps = 20
    c.matmul_size = 8192
    c.bank_sizes = (10_000, 100_000, 1_281_167, 10_000_000)
    c.bank_memory_limit_gb = 60.0
    c.epoch_images = 50_000
  elif preset == "cpu_backbones":
    # The backbone axis on a 2-core CPU, in about 5 minutes: ours and SimCLR on
    # the three backbones of experiments/model_efficiency's arch preset, of
    # about equal forward FLOPs on 32 px images (the ViT with 4 px patches).
    c.grid = tuple((name, width, 128, ("ours", "simclr"), (True,)) for name, width in
                   (("resnet18", 0.25), ("mobilenet_v2", 0.5), ("vit_tiny", 0.25)))
    c.dtype = "float32"
    c.warmup_steps = 1
    c.timed_steps = 3
    c.matmul_size = 2048
    c.bank_sizes = ()
    c.bank_memory_limit_gb = 12.0
    c.epoch_images = 0
  elif preset == "gpu_core":
    # The rows experiments/gpu.sh takes, in about 3 minutes of one GPU: each
    # method's step at ResNet-18 / batch 512 / bf16, both bank passes, the peak,
    # the input pipeline and the resident vs streaming epoch.
    c.grid = (("resnet18", 1.0, 512, ALL, (True,)),)
    c.dtype = "bfloat16"
    c.warmup_steps = 3
    c.timed_steps = 20
    c.matmul_size = 8192
    c.bank_sizes = (100_000, 1_281_167)
    c.bank_memory_limit_gb = 60.0
    c.epoch_images = 50_000
  elif preset == "smoke":
    # Toy sizes, seconds on CPU: `SMOKE=1 bash experiments/gpu.sh` and its test.
    c.grid = (("resnet18", 0.125, 32, ALL, (True,)),)
    c.dtype = "float32"
    c.warmup_steps = 1
    c.timed_steps = 1
    c.matmul_size = 256
    c.bank_sizes = (1_000,)
    c.bank_batch = 64
    c.bank_memory_limit_gb = 2.0
    c.pipeline_decode_images = 100
    c.pipeline_batch = 64
    c.bank_rows = 1_000
    c.epoch_images = 0
  else:
    raise ValueError(f"preset must be 'cpu', 'cpu_backbones', 'gpu', 'gpu_core' or 'smoke', "
                     f"got {preset!r}.")
  c.results = f"benchmarks/results/{preset}"   # writes <results>.json and <results>.md
  c.data_source = ""            # '' = the shared CIFAR-10 archive (or TFDS cifar10)
  return c
