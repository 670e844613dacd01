"""The compilation cache under the workdir, the profiler window and per-window step time."""

import json
import os
import subprocess
import sys

import pytest

from ssl_jax import compile_cache
from ssl_jax import profiling
from ssl_jax import run_config
from tests import runs
from tests.helpers import needs_cifar10, tiny_config


def test_the_cache_folder_follows_the_config():
  config = tiny_config()
  assert compile_cache.cache_dir(config, "/w/run") == "/w/run/compilation_cache"
  config.compilation_cache_dir = "/shared/xla"
  assert compile_cache.cache_dir(config, "/w/run") == "/shared/xla"
  assert compile_cache.cache_dir(config, "gs://b/run") == "/shared/xla"
  config.compilation_cache_dir = "workdir"
  assert compile_cache.cache_dir(config, "gs://b/run") == os.path.expanduser(
      compile_cache.LOCAL_FALLBACK)   # not on the object store: every compile would wait on it
  config.compilation_cache_dir = "gs://b/xla"
  assert compile_cache.cache_dir(config, "/w/run") == "gs://b/xla"
  config.compilation_cache_dir = ""
  assert compile_cache.cache_dir(config, "/w/run") is None


@pytest.mark.parametrize("window", [(1,), (-1, 3), (2, 0), (1, 2, 3)])
def test_a_bad_profile_window_is_refused(window):
  config = tiny_config(**{"profile_steps": window})
  with pytest.raises(run_config.ConfigError, match=r"config.profile_steps must be \(START, COUNT\)"):
    run_config.validate_config(config, 1)
  assert profiling.profile_window(tiny_config(**{"profile_steps": (3, 2)})) == (3, 5)
  assert profiling.profile_window(tiny_config()) is None


def _run(workdir, *extra):
  env = dict(runs.ENV)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)   # the test session's shared cache: not this run's
  cmd = runs.command(workdir, "--config.eval.every_epochs=0", *extra)
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=runs.REPO, env=env, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc.stdout + proc.stderr


@pytest.mark.extended
@needs_cifar10
def test_a_restart_reads_every_program_back_and_a_profile_is_written(tmp_path):
  workdir = tmp_path / "run"
  out = _run(workdir, "--config.num_epochs=1", "--config.profile_steps=2,3")
  cache = workdir / "compilation_cache"
  assert f"compilation cache: {cache}" in out
  first = sorted(os.listdir(cache))
  assert any("pmap" in name or "jit" in name for name in first), first
  # The trace of steps 3..5, in TensorBoard's profile plugin layout.
  assert "profile of steps 3..5 written to" in out
  traces = list((workdir / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  records = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  timed = [r["step_seconds"] for r in records if "step_seconds" in r]
  assert len(timed) == 4 and all(t > 0 for t in timed)   # steps 2, 4, 6 and the epoch end, 7
  summary = json.load(open(workdir / "summary.json"))
  assert 0 < summary["first_step_seconds"] < summary["wall_seconds"]

  # Another process compiling the same programs (as a restart does) reads them all
  # back: the cache gains no entry.
  again = tmp_path / "again"
  out = _run(again, "--config.num_epochs=1", f"--config.compilation_cache_dir={cache}")
  assert f"compilation cache: {cache}" in out and not (again / "compilation_cache").exists()
  assert sorted(os.listdir(cache)) == first
  # A restart of the first run (one more epoch) uses its cache too.
  out = _run(workdir, "--config.num_epochs=2")
  assert "resuming from checkpoint at step 7" in out and f"compilation cache: {cache}" in out
  assert set(first) <= set(os.listdir(cache))
  # Off: nothing is written under the workdir.
  other = tmp_path / "off"
  out = _run(other, "--config.num_epochs=1", "--config.compilation_cache_dir=")
  assert "compilation cache" not in out and not (other / "compilation_cache").exists()
