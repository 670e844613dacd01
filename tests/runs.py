"""The tiny CLI run the reliability and gs:// tests kill, resume and compare.

3 epochs of 7 steps on real CIFAR-10 images, a checkpoint every 5 steps, on 2
fake devices. Workdirs may be local paths or gs:// URIs (read through
`ssl_jax.storage`, as the run writes them).
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np

from ssl_jax import encoder
from ssl_jax import storage
from tests.helpers import CIFAR10

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = [f"--config.data.source=folder:{CIFAR10}", "--config.data.fraction=0.01",
        "--config.data.test_fraction=0.02", "--config.model.name=resnet10",
        "--config.model.width=0.125", "--config.batch_size=64", "--config.num_epochs=3",
        "--config.eval.batch_size=256", "--config.eval.linear_epochs=2",
        "--config.log_every_steps=2", "--config.checkpoint_every_steps=5"]
TOTAL_STEPS = 21
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")


def command(workdir, *extra, stop_at=False):
  """The tiny run's command line; `stop_at`: through tests/stop_at_step.py, which
  signals the run at the steps its environment names."""
  entry = ["tests/stop_at_step.py"] if stop_at else ["-m", "ssl_jax.main"]
  return [sys.executable, *entry, "--config", "configs/quickstart.py",
          "--workdir", str(workdir), *TINY, *extra]


def run(workdir, *extra, expect=0, env=None, **stop_env):
  """Runs the tiny run to its end (or its expected exit status); returns its output.
  `stop_env` (STOP_AT="SIGTERM@7", FILL_DISK_AT=...) runs it through stop_at_step.py."""
  env = dict(env or ENV, **{k: str(v) for k, v in stop_env.items()})
  proc = subprocess.run(command(workdir, *extra, stop_at=bool(stop_env)), capture_output=True,
                        text=True, cwd=REPO, env=env, timeout=600)
  assert proc.returncode == expect, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc.stdout + proc.stderr


def start_and_signal(workdir, sig, after_checkpoint, env=None):
  """Starts a run, sends `sig` once the checkpoint of step `after_checkpoint` is committed."""
  proc = subprocess.Popen(command(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=REPO, env=env or ENV)
  marker = storage.join(str(workdir), "checkpoints", str(after_checkpoint), "commit_success.txt")
  deadline = time.time() + 600
  while not storage.exists(marker):
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.time() < deadline
    time.sleep(0.02 if not storage.is_remote(marker) else 0.1)
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=600)
  return proc.returncode, out


def final_state(workdir, step=TOTAL_STEPS):
  path = storage.absolute(storage.join(str(workdir), "checkpoints", str(step), "default"))
  return encoder.restore_parts(path)   # host arrays, whatever device or process count saved


def training_records(workdir):
  # Wall-clock facts, and which epochs paid for a compilation (one per process).
  timing = {"epoch_seconds", "epoch_steps", "images_per_second", "includes_compile",
            "input_wait_seconds", "input_wait_fraction", "input_images_per_second",
            "step_seconds"}
  lines = storage.read_text(storage.join(str(workdir), "metrics.jsonl")).splitlines()
  return [{k: v for k, v in json.loads(l).items() if k not in timing} for l in lines]


def summary(workdir) -> dict:
  return storage.read_json(storage.join(str(workdir), "summary.json"))


def assert_same_run(a, b):
  sa, sb = final_state(a), final_state(b)
  la, lb = jax.tree_util.tree_leaves_with_path(sa), jax.tree_util.tree_leaves(sb)
  assert len(la) == len(lb) > 10
  for (path, x), y in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  assert training_records(a) == training_records(b)
  summary_a, summary_b = summary(a), summary(b)
  for key in ("knn_top1", "knn_top1_embedding", "linear_top1", "knn_top1_init"):
    assert summary_a[key] == summary_b[key], key
