"""The workdir lock: one live run per workdir; a dead holder never blocks the rerun."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from ssl_jax import workdir_lock


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _write_holder(workdir, **fields):
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
            "process_start": workdir_lock._process_start(os.getpid()), "token": "other"}
  holder.update(fields)
  path = workdir / workdir_lock.FILENAME
  path.write_text(json.dumps(holder))
  return path


def test_a_second_run_is_refused_naming_the_holder(tmp_path):
  with workdir_lock.acquire(str(tmp_path), log=print) as lock:
    assert json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getpid()
    with pytest.raises(workdir_lock.WorkdirLocked,
                       match=rf"in use by another run \(host {socket.gethostname()}, "
                             rf"process {os.getpid()}, started 20"):
      workdir_lock.acquire(str(tmp_path))
    assert lock.holder["token"] in (tmp_path / "lock.json").read_text()  # untouched
  assert not (tmp_path / "lock.json").exists()  # released
  workdir_lock.acquire(str(tmp_path)).release()  # free again


@pytest.mark.parametrize("fields, reason", [
    (lambda: {"pid": _dead_pid()}, "no longer exists"),
    # A live process id that belongs to a process started at another time.
    (lambda: {"process_start": "1"}, "no longer exists"),
    (lambda: {"host": "elsewhere"}, "last heartbeat was"),
])
def test_a_lock_whose_holder_is_gone_is_taken_over(fields, reason, tmp_path):
  path = _write_holder(tmp_path, **fields())
  os.utime(path, (time.time() - 3600, time.time() - 3600))  # an hour without heartbeat
  lines = []
  with workdir_lock.acquire(str(tmp_path), log=lines.append) as lock:
    assert json.loads(path.read_text())["token"] == lock.holder["token"]
  assert len(lines) == 1 and "taking over the lock of a run that is gone" in lines[0]
  assert reason in lines[0]


def test_a_live_holder_on_another_host_blocks_until_its_heartbeat_is_stale(tmp_path):
  _write_holder(tmp_path, host="elsewhere")
  with pytest.raises(workdir_lock.WorkdirLocked, match="host elsewhere"):
    workdir_lock.acquire(str(tmp_path))
  with workdir_lock.acquire(str(tmp_path), stale_after=-1.0, log=lambda s: None):
    pass


def test_an_unreadable_lock_file_is_taken_over(tmp_path):
  (tmp_path / "lock.json").write_text("{not json")
  lines = []
  workdir_lock.acquire(str(tmp_path), log=lines.append).release()
  assert "unreadable" in lines[0]


def test_the_heartbeat_renews_the_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_SECONDS", 0.05)
  with workdir_lock.acquire(str(tmp_path)):
    path = tmp_path / "lock.json"
    os.utime(path, (0, 0))
    deadline = time.time() + 10
    while os.stat(path).st_mtime == 0 and time.time() < deadline:
      time.sleep(0.02)
    assert os.stat(path).st_mtime > time.time() - 60


def test_release_leaves_a_lock_taken_over_by_another_run(tmp_path):
  lock = workdir_lock.acquire(str(tmp_path))
  _write_holder(tmp_path, token="someone else")
  lock.release()
  assert json.loads((tmp_path / "lock.json").read_text())["token"] == "someone else"
