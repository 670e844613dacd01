"""Runs that live in cloud storage: gs:// workdirs, caches and folder sources.

Everything runs against a local GCS emulator (tests/gcs.py) on 127.0.0.1: the
training CLI writes a gs:// workdir, is killed with SIGKILL after a
mid-epoch checkpoint and rerun, and must end bit-identical to the
uninterrupted local `reference_run`; `ssl_jax.evaluate` reads the bucket; a
truncated latest checkpoint in the bucket falls back to the one before.
"""

import concurrent.futures
import json
import pathlib
import signal
import subprocess
import sys
import tarfile

import jax
import ml_collections
import numpy as np
import pytest

from ssl_jax import data as data_lib
from ssl_jax import records
from ssl_jax import run_files
from ssl_jax import sources
from ssl_jax import storage
from ssl_jax import workdir_lock
from tests import gcs
from tests import runs
from tests.helpers import cifar10_folder, needs_cifar10

BUCKET = f"gs://{gcs.BUCKET}"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  """The emulator, with this process's environment pointing at it; yields that environment."""
  log = tmp_path_factory.mktemp("gcs") / "emulator.log"
  with gcs.emulator(str(log)) as env, pytest.MonkeyPatch.context() as mp:
    for k, v in env.items():
      mp.setenv(k, v)
    yield dict(runs.ENV, **env)


def _objects(prefix: str) -> list[str]:
  """Every object under `prefix` (a gs:// folder), relative to it, sorted."""
  import fsspec
  fs, root = fsspec.core.url_to_fs(prefix)
  return sorted(p[len(root) + 1:] for p in fs.find(root))


def _data_config(source: str, cache_dir: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"source": source, "image_size": 32, "cache_dir": cache_dir,
                                    "skip_corrupt": False})


def _upload(local_root, uri: str) -> None:
  for f in sorted(pathlib.Path(local_root).rglob("*")):
    if f.is_file():
      storage.write_bytes_atomic(storage.join(uri, f.relative_to(local_root).as_posix()),
                                 f.read_bytes())


@pytest.fixture(scope="module")
def killed_and_resumed(emulator):
  """A gs:// run killed after its step-10 checkpoint (mid-epoch), then rerun to the end."""
  workdir = f"{BUCKET}/killed"
  code, out = runs.start_and_signal(workdir, signal.SIGKILL, after_checkpoint=10, env=emulator)
  assert code == -signal.SIGKILL, out[-3000:]
  lock_left = storage.exists(storage.join(workdir, "lock.json"))
  epoch_timing = storage.read_json(storage.join(workdir, run_files.EPOCH_TIMING))
  out = runs.run(workdir, env=emulator)
  return workdir, out, lock_left, epoch_timing


@pytest.mark.slow
@needs_cifar10
def test_a_gs_run_killed_and_rerun_equals_an_uninterrupted_local_run(
    reference_run, killed_and_resumed):
  workdir, out, lock_left, epoch_timing = killed_and_resumed
  assert lock_left  # SIGKILL left the lock object; the rerun took it over
  assert "taking over the lock of a run that is gone" in out and "no longer exists" in out
  resumed_at = int(out.split("resuming from checkpoint at step ")[1].split()[0])
  assert 10 <= resumed_at < runs.TOTAL_STEPS and resumed_at % 7  # mid-epoch
  assert str(resumed_at) in epoch_timing
  runs.assert_same_run(reference_run, workdir)
  # Every file of a local workdir is in the bucket, and the lock is released.
  names = _objects(workdir)
  local = _objects_local(reference_run)
  for name in ("config.json", "run_info.json", "metrics.jsonl", "summary.json",
               "init_eval.json", run_files.EPOCH_TIMING):
    assert name in names and name in local, name
  assert "lock.json" not in names
  assert any(n.startswith("tensorboard/events.out.tfevents.") for n in names)
  steps = lambda ns: sorted({n.split("/")[1] for n in ns if n.startswith("checkpoints/")})
  assert steps(names) == steps(local) == ["15", "20", str(runs.TOTAL_STEPS)]
  for step in steps(names):
    assert f"checkpoints/{step}/commit_success.txt" in names  # orbax's commit marker
  # Nothing was written to a local folder named after the URI.
  assert not (runs.REPO / "gs:").exists()


def _objects_local(root) -> list[str]:
  root = pathlib.Path(root)
  return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
@needs_cifar10
def test_evaluate_and_export_read_a_gs_workdir_and_fall_back_from_a_truncated_checkpoint(
    emulator, killed_and_resumed, tmp_path):
  workdir = killed_and_resumed[0]
  evaluate = [sys.executable, "-m", "ssl_jax.evaluate", "--workdir", workdir]
  proc = subprocess.run(evaluate, capture_output=True, text=True, cwd=runs.REPO, env=emulator,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = storage.read_json(storage.join(workdir, "eval.json"))
  assert result["step"] == runs.TOTAL_STEPS
  assert result["knn_top1"] == runs.summary(workdir)["knn_top1"]
  proc = subprocess.run([sys.executable, "-m", "ssl_jax.export", "--workdir", workdir, "--out",
                         str(tmp_path / "model.msgpack")], capture_output=True, text=True,
                        cwd=runs.REPO, env=emulator, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"(step {runs.TOTAL_STEPS};" in proc.stdout
  # Truncate every data object of the latest checkpoint, as a crash mid-upload
  # of a rewritten object or a damaged bucket would leave it.
  latest = storage.join(workdir, "checkpoints", str(runs.TOTAL_STEPS))
  damaged = [n for n in _objects(latest)
             if n.rsplit("/", 1)[-1] not in ("commit_success.txt", "_CHECKPOINT_METADATA")]
  for name in damaged:
    path = storage.join(latest, name)
    storage.write_bytes_atomic(path, storage.read_bytes(path)[:7])
  before = _objects(latest)
  proc = subprocess.run(evaluate, capture_output=True, text=True, cwd=runs.REPO, env=emulator,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"checkpoint at step {runs.TOTAL_STEPS} is unreadable" in proc.stdout + proc.stderr
  assert json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])["step"] == 20
  # Set aside, not deleted: every object moved to unreadable-<step>-<time>/.
  folders = {n.split("/")[1] for n in _objects(storage.join(workdir)) if "/" in n
             and n.startswith("checkpoints/")}
  aside = [f for f in folders if f.startswith(f"unreadable-{runs.TOTAL_STEPS}-")]
  assert len(aside) == 1 and str(runs.TOTAL_STEPS) not in folders
  assert _objects(storage.join(workdir, "checkpoints", aside[0])) == before


@needs_cifar10
def test_a_gs_folder_source_and_cache_decode_as_a_local_folder(emulator, tmp_path, monkeypatch):
  local = cifar10_folder(tmp_path / "cifar", train_per_class=3, test_per_class=2)
  _upload(local, f"{BUCKET}/data/cifar")
  config = _data_config(f"folder:{BUCKET}/data/cifar", f"{BUCKET}/cache")
  want, _ = data_lib.load_split(_data_config(f"folder:{local}", ""), "train")
  got, skipped = data_lib.load_split(config, "train")
  assert skipped == 0 and got.class_names == want.class_names
  np.testing.assert_array_equal(got.images, want.images)
  np.testing.assert_array_equal(got.labels, want.labels)
  cached = _objects(f"{BUCKET}/cache")
  assert len(cached) == 1 and cached[0].endswith(".npz")
  # A .tar.gz in the bucket decodes to the same pixels.
  with tarfile.open(tmp_path / "cifar.tar.gz", "w:gz") as tar:
    tar.add(local, arcname="cifar")
  storage.write_bytes_atomic(f"{BUCKET}/data/cifar.tar.gz",
                             (tmp_path / "cifar.tar.gz").read_bytes())
  from_tar, _ = data_lib.load_split(_data_config(f"folder:{BUCKET}/data/cifar.tar.gz", ""),
                                    "train")
  np.testing.assert_array_equal(from_tar.images, want.images)
  # The second load reads the cache object: decoding again would fail.
  monkeypatch.setattr(sources, "decode_folder", lambda *a, **k: pytest.fail("decoded again"))
  again, _ = data_lib.load_split(config, "train")
  np.testing.assert_array_equal(again.images, want.images)
  # The streaming input's record source reads the same files from the bucket.
  table = records.open_records(f"folder:{BUCKET}/data/cifar", "train")
  assert len(table) == len(want) and table.class_names == want.class_names
  assert table.read(0) == records.open_records(f"folder:{local}", "train").read(0)


def test_a_missing_bucket_or_path_is_one_line_before_anything_compiles(emulator):
  proc = subprocess.run(runs.command("gs://no-such-bucket/run"), capture_output=True, text=True,
                        cwd=runs.REPO, env=emulator, timeout=600)
  errors = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
  assert errors[0] == ("error: workdir gs://no-such-bucket/run: bucket 'no-such-bucket' does "
                       "not exist; create it (gcloud storage buckets create "
                       "gs://no-such-bucket) or fix the path.")
  with pytest.raises(data_lib.DataError, match=f"path {BUCKET}/nothing-here does not exist"):
    data_lib.load_split(_data_config(f"folder:{BUCKET}/nothing-here", ""), "train")
  with pytest.raises(data_lib.DataError, match="tfds_data_dir gs://no-such-bucket/tfds does not"):
    records.check_tfds_data_dir("gs://no-such-bucket/tfds")


def test_the_workdir_lock_on_a_bucket(emulator):
  workdir = f"{BUCKET}/locked"
  path = storage.join(workdir, "lock.json")
  lock = workdir_lock.acquire(workdir)
  assert storage.read_json(path)["token"] == lock.holder["token"]
  with pytest.raises(workdir_lock.WorkdirLocked, match="is in use by another run"):
    workdir_lock.acquire(workdir)
  lock.release()
  assert not storage.exists(path)
  # Eight runs starting together: the create is conditional, so exactly one wins.
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    won = list(pool.map(lambda i: storage.create_exclusive(path, b'{"token": "%d"}' % i),
                        range(8)))
  assert won.count(True) == 1
  assert storage.read_json(path)["token"] == str(won.index(True))
  # A holder on this host whose process is gone is taken over.
  storage.write_json_atomic(path, dict(lock.holder, pid=2**22 + 1, token="dead"))
  said = []
  taken = workdir_lock.acquire(workdir, log=said.append)
  assert "no longer exists" in said[0]
  taken.release()
  assert not storage.exists(path)


@needs_cifar10
@pytest.mark.extended
def test_two_processes_share_a_gs_workdir_as_they_share_a_local_one(emulator, tmp_path):
  """A pod's shape: 2 processes x 2 devices, every process saving and restoring from one
  bucket; the result equals the same 2-process run in a local workdir, bit for bit."""
  from tests import test_multiprocess as mp

  def two_processes(workdir):
    return mp._finish(mp._start(workdir, 2, 2, mp._free_port(), base_env=emulator))

  remote, local = f"{BUCKET}/two", tmp_path / "two"
  two_processes(remote)
  two_processes(local)
  a, b = (runs.final_state(w, mp.TOTAL_STEPS) for w in (remote, local))
  leaves = jax.tree_util.tree_leaves_with_path(a)
  assert len(leaves) > 10
  for (path, x), y in zip(leaves, jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  summary = runs.summary(remote)
  assert summary["processes"] == 2 and summary["replicas_identical"] is True
  assert summary["knn_top1"] == runs.summary(local)["knn_top1"]
  assert not storage.exists(storage.join(remote, "lock.json"))
