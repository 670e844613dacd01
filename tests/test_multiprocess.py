"""Multi-process training through jax.distributed, on this machine.

Two processes with 2 fake CPU devices each (coordinator on 127.0.0.1) train a
tiny config on real CIFAR-10 images with the default mapping
(config.parallel="mesh"); the result must equal a 1-process, 4-device run on
the same global batches, the pmap mapping, and a run with the split resident
on the devices, survive a kill of both processes, and stop with an error when
one process dies.
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ssl_jax import encoder
from tests.helpers import CIFAR10, needs_cifar10

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = [f"--config.data.source=folder:{CIFAR10}", "--config.data.fraction=0.01",
        "--config.data.test_fraction=0.02", "--config.model.name=resnet10",
        "--config.model.width=0.125", "--config.batch_size=64", "--config.num_epochs=2",
        "--config.eval.batch_size=256", "--config.eval.linear_epochs=2",
        "--config.log_every_steps=2", "--config.checkpoint_every_steps=4",
        # Small steps: chaotic training would amplify float32 summation-order
        # differences past any tolerance.
        "--config.optim.base_lr=0.02", "--config.bank.lr=1.0",
        # No decoded-split cache: each process decodes its own share of the archive.
        "--config.data.cache_dir="]
TOTAL_STEPS = 14


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(workdir, extra=()):
  return [sys.executable, "-m", "ssl_jax.main", "--config", "configs/quickstart.py",
          "--workdir", str(workdir), *TINY, *extra]


def _start(workdir, num_processes, devices_per_process, port=None, extra=(), base_env=None):
  procs = []
  for pid in range(num_processes):
    env = dict(base_env or os.environ, SSL_JAX_HEARTBEAT_SECONDS="10",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    if num_processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                 JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(_command(workdir, extra), cwd=REPO, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  return procs


def _finish(procs, timeout=300):
  outs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def _wait_for_checkpoint(procs, workdir, step, timeout=600):
  """Waits until the checkpoint of `step` is committed, every process still running."""
  marker = pathlib.Path(workdir) / "checkpoints" / str(step) / "commit_success.txt"
  deadline = time.time() + timeout
  while not marker.exists():
    # Which phase failed, said apart: a process that ended early, or a slow host.
    assert all(p.poll() is None for p in procs), [p.returncode for p in procs]
    assert time.time() < deadline, f"no checkpoint of step {step} after {timeout} s (a busy host?)"
    time.sleep(0.02)


def _state(workdir, step=TOTAL_STEPS):
  # Host arrays: the processes saved global arrays of a 2-process mesh.
  return encoder.restore_parts(str(pathlib.Path(workdir) / "checkpoints" / str(step) / "default"))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("two")
  outs = _finish(_start(workdir, 2, 2, _free_port()))
  return workdir, outs


@pytest.mark.slow
@needs_cifar10
def test_two_processes_equal_one_process_with_four_devices(two_process_run, tmp_path):
  workdir, outs = two_process_run
  summary = json.load(open(workdir / "summary.json"))
  assert summary["processes"] == 2 and summary["devices"] == 4
  # Parameters, statistics and bank are bit-identical on every replica of both processes.
  assert summary["replicas_identical"] is True
  # Only process 0 reports; each process decoded only its half of the subsets.
  assert "kNN top-1: untrained" in outs[0]
  # Gloo's own connection notices aside (its threads write them interleaved,
  # so a notice can be cut over two lines).
  ours = [line for line in outs[1].splitlines()
          if line.strip() and not re.search(r"Gloo|peer ranks|is connected|Expected number", line)]
  assert ours == [], outs[1][-2000:]
  assert "decoded 250 of the 500 examples of 'train'" in outs[0]
  assert "decoded 100 of the 200 examples of 'test'" in outs[0]
  # One process, four devices, two data shards: the same global batches.
  _finish(_start(tmp_path, 1, 4, extra=["--config.data.shards=2"]))
  single = json.load(open(tmp_path / "summary.json"))
  assert single["processes"] == 1 and single["devices"] == 4
  a, b = _state(workdir), _state(tmp_path)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  assert summary["knn_top1"] == pytest.approx(single["knn_top1"], abs=0.02)


@pytest.mark.extended
@needs_cifar10
def test_pmap_with_two_processes_ends_where_the_mesh_does(two_process_run, tmp_path):
  """config.parallel: the module's runs use the default "mesh" (one jit over a mesh
  of both processes' devices); "pmap" maps the same per-replica step, and the
  two end bit-identical (tests/test_mapping.py on one process)."""
  workdir, _ = two_process_run
  _finish(_start(tmp_path, 2, 2, _free_port(), extra=["--config.parallel=pmap"]))
  assert json.load(open(tmp_path / "summary.json"))["replicas_identical"] is True
  a, b = _state(tmp_path), _state(workdir)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.mark.extended
@needs_cifar10
def test_device_resident_data_with_two_processes_gives_the_streaming_run(two_process_run,
                                                                          tmp_path):
  """data.on_device with 2 processes: each keeps its own half of the split on its devices."""
  workdir, _ = two_process_run
  _finish(_start(tmp_path, 2, 2, _free_port(), extra=["--config.data.on_device=True"]))
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["processes"] == 2 and summary["replicas_identical"] is True
  # Process 1's rows start at instance 250: a wrong offset would train on other images.
  a, b = _state(tmp_path), _state(workdir)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))


@pytest.mark.extended
@needs_cifar10
def test_killing_both_processes_then_rerunning_resumes(two_process_run, tmp_path):
  workdir, _ = two_process_run
  port = _free_port()
  procs = _start(tmp_path, 2, 2, port)
  _wait_for_checkpoint(procs, tmp_path, 8, timeout=600)
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.communicate()
  outs = _finish(_start(tmp_path, 2, 2, _free_port()))
  assert "resuming from checkpoint at step" in outs[0]
  a, b = _state(workdir), _state(tmp_path)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


@needs_cifar10
@pytest.mark.parametrize("victim", [pytest.param(1, marks=pytest.mark.slow),
                                    pytest.param(0, marks=pytest.mark.extended)],
                         ids=["worker dies", "coordinator dies"])
def test_one_process_dying_stops_the_other(tmp_path, victim):
  procs = _start(tmp_path, 2, 2, _free_port())
  # 600 s as in the preemption test: on a loaded host the two processes may take
  # longer than 300 s to reach step 4 (the survivor itself stopped within a
  # second of the kill in every run seen, loaded or not).
  _wait_for_checkpoint(procs, tmp_path, 4, timeout=600)
  procs[victim].send_signal(signal.SIGKILL)
  procs[victim].communicate()
  survivor = procs[1 - victim]
  t0 = time.time()
  try:
    out = survivor.communicate(timeout=180)[0]
  except subprocess.TimeoutExpired:
    survivor.kill()
    pytest.fail("the surviving process hung for 180 s after its peer died")
  # JAX's distributed runtime notices the missing peer (heartbeats, or the
  # coordinator's socket closing) and ends the process with a message.
  assert survivor.returncode != 0
  assert re.search(r"(?i)another task died|coordination service", out), out[-3000:]
  print(f"survivor stopped {time.time() - t0:.0f} s after its peer was killed")


@pytest.mark.slow
@needs_cifar10
def test_preempting_one_process_stops_every_process_at_the_same_step(two_process_run, tmp_path):
  """SIGTERM reaches only the worker: both processes agree on the step to stop
  after (gathering their flags every preemption_check_steps), checkpoint it, exit 143 without hanging, and a
  rerun ends bit-identical to the uninterrupted run."""
  workdir, _ = two_process_run
  procs = _start(tmp_path, 2, 2, _free_port())
  _wait_for_checkpoint(procs, tmp_path, 4, timeout=600)
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [143, 143], [o[-1500:] for o in outs]
  saved = {int(re.search(r"checkpoint saved at step (\d+)", o).group(1)) for o in outs}
  assert len(saved) == 1 and 4 < saved.pop() < TOTAL_STEPS, outs[0][-1500:]
  outs = _finish(_start(tmp_path, 2, 2, _free_port()))
  assert "resuming from checkpoint at step" in outs[0]
  a, b = _state(workdir), _state(tmp_path)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


def _folder_bytes(path) -> int:
  return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())


@pytest.mark.extended
@needs_cifar10
def test_a_sharded_bank_is_saved_and_restored_by_the_processes_that_hold_it(tmp_path):
  """bank.sharded with 2 processes x 2 devices: each process writes its own half of
  the bank into the checkpoint (asynchronously, orbax's per-process files) and
  restores into its devices' rows only (`mapping.saved_template`); the resumed run ends where one process
  with four devices does (float tolerance, as above)."""
  sharded = ["--config.bank.sharded=True"]
  procs = _start(tmp_path / "two", 2, 2, _free_port(), extra=sharded)
  _wait_for_checkpoint(procs, tmp_path / "two", 8, timeout=600)
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.communicate()
  step8 = tmp_path / "two" / "checkpoints" / "8" / "default"
  written = {k: _folder_bytes(step8 / f"ocdbt.process_{k}") for k in (0, 1)}
  # Each about half (orbax also splits the replicated leaves' writes between
  # the processes); from host copies process 1 wrote nothing.
  print(f"bytes written per process: {written}")
  assert min(written.values()) > 0.4 * sum(written.values()), written
  assert written[1] > 250 * 128 * 4, written   # at least its 250 bank rows of 128 float32
  outs = _finish(_start(tmp_path / "two", 2, 2, _free_port(), extra=sharded))
  assert "resuming from checkpoint at step 8" in outs[0]
  _finish(_start(tmp_path / "one", 1, 4, extra=[*sharded, "--config.data.shards=2"]))
  a, b = _state(tmp_path / "two"), _state(tmp_path / "one")
  assert a["bank"].shape == (500, 128)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  # The bank's freshness, read without gathering it (`builders.bank_reader`: each
  # process sends the probe rows it holds and its Gram matrix): the probe is
  # all 500 instances in both runs.
  two, one = (json.load(open(tmp_path / w / "summary.json")) for w in ("two", "one"))
  for key in ("bank_cos_mean", "bank_cos_p5", "bank_effective_rank"):
    assert two[key] == pytest.approx(one[key], rel=1e-3), key


def test_a_held_workdir_stops_every_process(tmp_path):
  """Process 0 finds the workdir held (here by the test's own live process) and
  refuses; process 1 follows its decision: both exit 1 at once, nothing written."""
  (tmp_path / "lock.json").write_text(json.dumps(
      {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
       "token": "the test"}))
  procs = _start(tmp_path, 2, 2, _free_port())
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [1, 1], outs
  assert "is in use by another run" in outs[0] and f"process {os.getpid()}" in outs[0], outs[0]
  assert "process 0 says which" in outs[1], outs[1]
  assert sorted(os.listdir(tmp_path)) == ["lock.json"]
