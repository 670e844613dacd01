"""`SMOKE=1 bash experiments/gpu.sh OUT`: every GPU measurement's steps, at toy sizes on CPU."""

import json
import os
import pathlib
import subprocess

import pytest

from tests.helpers import needs_cifar10

REPO = pathlib.Path(__file__).resolve().parents[1]


@needs_cifar10
@pytest.mark.extended
def test_the_gpu_script_runs_every_step_at_toy_sizes(tmp_path):
  """Two to three minutes on 2 cores: in the `-m extended` run, which CI leaves out
  (experiments/gpu.sh itself ran on an H200 on 2026-12-04)."""
  env = dict(os.environ, SMOKE="1", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(["bash", "experiments/gpu.sh", str(tmp_path)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  bench = json.loads((tmp_path / "benchmark.json").read_text())
  assert sorted(r["method"] for r in bench["steps"]) == ["byol", "npid", "ours", "simclr"]
  assert all(r["flops_per_step"] for r in bench["steps"])
  compare = json.loads((tmp_path / "compare" / "results.json").read_text())
  epochs = compare["meta"]["epochs_in_budget"]
  # At SimCLR's 2 epochs of FLOPs the single-branch step buys more epochs, BYOL's fewer.
  assert epochs["simclr"] == 2 and epochs["ours"] > 2 and epochs["byol"] < 2, epochs
  assert (tmp_path / "compare.md").exists() and "equal compute" in proc.stdout
  assert not list(tmp_path.glob("runs/*/seed*/checkpoints"))  # results only come back
  assert not (tmp_path / "runs" / "compilation_cache").exists()
