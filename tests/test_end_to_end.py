"""The CLI end to end on real CIFAR-10 images: learning, resume, standalone evaluation.

The learning test is the quickstart recipe shrunk to about a minute and a half
on 2 CPU cores; it asserts that kNN top-1 beats the untrained network by a
margin well above the noise of 1,000 test images (about 1.5 points).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import CIFAR10, needs_cifar10

REPO = pathlib.Path(__file__).resolve().parents[1]

SMALL = [f"--config.data.source=folder:{CIFAR10}", "--config.data.fraction=0.05",
         "--config.data.test_fraction=0.1", "--config.batch_size=128", "--config.bank.lr=6.4",
         "--config.eval.linear_epochs=10", "--config.log_every_steps=20"]


def _cli(module, *args, devices=2, timeout=900):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout + proc.stderr


@needs_cifar10
def test_quickstart_learns_resumes_and_evaluates(tmp_path):
  workdir = str(tmp_path / "run")
  common = ["--config", "configs/quickstart.py", "--workdir", workdir, *SMALL]
  out = _cli("ssl_jax.main", *common, "--config.num_epochs=2")
  assert "data source: folder:" in out and "untrained network: kNN top-1" in out
  first = json.load(open(os.path.join(workdir, "summary.json")))
  # Same command with more epochs: resumes from the epoch-2 checkpoint.
  out = _cli("ssl_jax.main", *common, "--config.num_epochs=6")
  assert "resuming from checkpoint at step 38 (epoch 2)" in out
  assert "calibrating the bank" not in out
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  for key in ("knn_top1_init", "knn_top1", "knn_top1_embedding", "linear_top1",
              "seconds_per_epoch", "images_per_second", "peak_memory_bytes", "epochs", "method",
              "dataset", "num_train_examples", "devices", "train_seconds", "wall_seconds"):
    assert key in summary, key
  assert summary["num_train_examples"] == 2500 and summary["devices"] == 2
  assert summary["knn_top1_init"] == first["knn_top1_init"]
  assert f"kNN top-1: untrained {summary['knn_top1_init']:.4f} -> trained" in out
  assert summary["knn_top1"] > summary["knn_top1_init"] + 0.03, summary
  assert summary["linear_top1"] > 0.2
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert max(steps) == 6 * 19
  # Standalone evaluation of the final checkpoint reproduces the final kNN.
  out = _cli("ssl_jax.evaluate", "--workdir", workdir)
  result = json.load(open(os.path.join(workdir, "eval.json")))
  assert result["step"] == 6 * 19
  assert result["knn_top1"] == pytest.approx(summary["knn_top1"], abs=1e-9)
