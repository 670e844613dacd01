"""Shared test fixtures: tiny configs on the real CIFAR-10 JPEG archive."""

import os

import pytest

from configs import default, quickstart

CIFAR10 = default.SHARED_CIFAR10

needs_cifar10 = pytest.mark.skipif(
    not os.path.exists(CIFAR10), reason=f"{CIFAR10} (the shared CIFAR-10 archive) is absent")


# The learning tests' recipe: the quickstart on 2,500 training and 1,000 test
# images, run through the command line on 2 fake devices.
LEARNING_ARGS = [f"--config.data.source=folder:{CIFAR10}", "--config.data.fraction=0.05",
                 "--config.data.test_fraction=0.1", "--config.batch_size=128",
                 "--config.bank.lr=6.4", "--config.eval.linear_epochs=10",
                 "--config.log_every_steps=20"]
LEARNING_EPOCHS = {"ours": 6, "simclr": 4, "byol": 8, "ours_vit": 12, "supervised": 4,
                   "ours_stream": 12}
# Changes to the recipe's flags per learning run: "ours_vit" is ours on ViT-Ti at
# width 1/4 with 4 px patches and its usual AdamW (the margins file lists what
# was tried for BYOL).
LEARNING_OVERRIDES: dict = {"ours_vit": [
    "--config.model.name=vit_tiny", "--config.model.width=0.25", "--config.model.patch_size=4",
    "--config.optim.name=adamw", "--config.optim.base_lr=5e-4",
    "--config.optim.weight_decay=0.05"]}
# kNN top-1 above the untrained network each learning test asserts: the
# smallest gain over 4 seeds less half the seeds' spread (max - min), from
# `python tests/learning_margins.py` (tests/learning_margins.md). BYOL gains
# little kNN this early (+0.6 to +4.9 points at 4 epochs, +1.9 to +4.9 at 8), and
# the ViT too (+0.3 to +3.2 at 6 epochs: no margin; +3.8 to +6.2 at 12).
# The supervised method's classifier: its test top-1 above chance (10 classes),
# +15.4 to +20.1 points over 4 seeds at 4 epochs.
# "ours_stream": ours streamed from a folder of the same images (tests/test_stream.py):
# +2.3 to +7.1 at 6 epochs (no margin), +2.8 to +7.0 at 12.
LEARNING_MARGINS = {"ours": 0.04, "simclr": 0.04, "byol": 0.004, "ours_vit": 0.026,
                    "supervised_classifier": 0.13, "ours_stream": 0.007}


def learning_command(method: str, workdir: str, seed: int = 0, epochs: int = 0) -> list[str]:
  """The `python -m ssl_jax.main` arguments of a learning test's run."""
  # A run's name is its method, or method_variant ("ours_vit") with LEARNING_OVERRIDES.
  return ["--config", f"configs/quickstart.py:{method.split('_')[0]}", "--workdir", workdir,
          *LEARNING_ARGS,
          *LEARNING_OVERRIDES.get(method, []), f"--config.seed={seed}",
          f"--config.num_epochs={epochs or LEARNING_EPOCHS[method]}"]


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


def cifar10_folder(root, train_per_class: int = 20, test_per_class: int = 10) -> str:
  """A small image-folder tree `root/{train,test}/<class>/<file>` of real CIFAR-10 JPEGs,
  the first files of each class in the shared archive; returns `root`."""
  import pathlib
  import tarfile
  want = {"train": train_per_class, "test": test_per_class}
  counts = {}
  root = pathlib.Path(root)
  with tarfile.open(CIFAR10, "r:*") as tar:
    for m in tar:
      parts = pathlib.PurePosixPath(m.name).parts
      if not m.isfile() or len(parts) < 3 or parts[-3] not in want:
        continue
      key = (parts[-3], parts[-2])
      if counts.get(key, 0) >= want[parts[-3]]:
        continue
      counts[key] = counts.get(key, 0) + 1
      out = root / parts[-3] / parts[-2] / parts[-1]
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_bytes(tar.extractfile(m).read())
  return str(root)


def run_experiment(name: str, preset: str, workdir, *flags: str, timeout: int = 1800):
  """`python -m experiments.<name>.run --config experiments/<name>/config.py:<preset>` on 2
  fake devices from the repository root; returns the finished process (stdout, stderr)."""
  import pathlib
  import subprocess
  import sys
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  cmd = [sys.executable, "-m", f"experiments.{name}.run", "--config",
         f"experiments/{name}/config.py:{preset}", "--workdir", str(workdir), *flags]
  return subprocess.run(cmd, cwd=pathlib.Path(__file__).resolve().parents[1], env=env,
                        capture_output=True, text=True, timeout=timeout)


def committed_record_differences(config, variants_fn) -> dict:
  """{record path: [config differences]} for every run record committed under
  config.records_dir, against the run the sweep (`variants_fn(config)`) would ask for;
  empty lists when the sweep would reuse it. Skips when none is committed.

  The budget is the records' own (the sweep's count, not compiled again) and
  `{workdir}` in init_from is a placeholder (records are compared by its last two
  parts), so this needs neither data nor a compile: a library change that alters a
  committed run shows in the default tests, not as a refused record hours into a sweep.
  """
  import glob
  import json
  import re
  from experiments import sweep
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  paths = sorted(p for p in glob.glob(os.path.join(repo, config.records_dir, "*", "seed*.json"))
                 if re.fullmatch(r"seed\d+\.json", os.path.basename(p)))
  if not paths:
    pytest.skip(f"no records committed under {config.records_dir}")
  saved = {}
  for p in paths:
    with open(p) as f:
      saved[p] = json.load(f)["config"]
  with config.unlocked():
    config.budget = max(float(s.get("train_flops", 0) or 0) for s in saved.values())
  variants = {v.name: v for v in sweep.parse_variants(variants_fn(config), config.base)}
  out = {}
  for path, run in saved.items():
    name, seed = os.path.basename(os.path.dirname(path)), int(os.path.basename(path)[4:-5])
    assert name in variants, f"{path}: no variant {name!r} in the sweep"
    wanted = sweep.variant_config(config.base, variants[name], seed)
    if "{" in wanted.get("init_from", ""):
      with wanted.unlocked():
        wanted.init_from = wanted.init_from.format(seed=seed, workdir="workdir")
    out[path] = sweep.config_differences(run, wanted)
  return out
