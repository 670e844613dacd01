"""One run at a time in a workdir: a lock file with its holder and a heartbeat.

A run holds `<workdir>/lock.json` while it trains: host, process id, the
process's start time, when the run started. A second run into the same
workdir stops at once (`WorkdirLocked`, a user error: one line, exit 1)
naming the holder, and touches nothing.

A lock left by a run that died without releasing it (SIGKILL, a lost
machine) never blocks the rerun that resumes it:

- same host: the holder is gone when its process no longer exists, or when
  its process id now belongs to a process started at another time (reuse);
- another host: the holder is gone when the lock's heartbeat (its file's
  modification time, renewed every HEARTBEAT_SECONDS by a daemon thread)
  is older than `stale_after` seconds.

The rerun says so in one line and takes the lock over.

The lock file is created exclusively: O_EXCL on a disk, an upload
conditional on no object existing on an object store (`gs://` workdirs,
`storage.create_exclusive`). There the heartbeat rewrites the object (its
update time is the heartbeat).

With several processes, process 0 takes the lock for the run and the others
follow its decision (`ssl_jax.train` broadcasts it). Readers (`python -m
ssl_jax.evaluate`) do not take it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
from typing import Callable, Iterator, Optional

from ssl_jax import storage

FILENAME = "lock.json"
HEARTBEAT_SECONDS = 30.0
# A holder on another host is taken for gone after this long without a heartbeat.
STALE_AFTER_SECONDS = 600.0


class WorkdirLocked(RuntimeError):
  """Another live run holds the workdir."""


def _process_start(pid: int) -> Optional[str]:
  """The start time of process `pid` in clock ticks since boot (Linux), or None."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      # Field 22; the command name (field 2) may hold spaces, so count from its ')'.
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start: Optional[str]) -> bool:
  """Whether process `pid` of this host exists and is the one that started at `start`."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, owned by another user
  now = _process_start(pid)
  return start is None or now is None or now == start


@dataclasses.dataclass
class Lock:
  """A held workdir lock; `release()` (or leaving the `with` block) removes it."""
  path: str
  holder: dict
  _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
  _thread: Optional[threading.Thread] = None

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        if not storage.is_remote(self.path):
          os.utime(self.path)
        elif (_read(self.path) or {}).get("token") == self.holder["token"]:
          storage.write_json_atomic(self.path, self.holder)  # a new update time
        else:
          return  # taken over: not ours to renew
      except OSError:
        return  # the workdir went away: nothing left to guard

  def start_heartbeat(self) -> None:
    self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
    self._thread.start()

  def release(self) -> None:
    self._stop.set()
    try:
      if (_read(self.path) or {}).get("token") != self.holder["token"]:
        return  # taken over by another run: not ours to remove
      storage.path(self.path).unlink()
    except OSError:
      pass

  def __enter__(self) -> "Lock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def describe(holder: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
  return f"host {holder.get('host')}, process {holder.get('pid')}, started {started}"


def _read(path: str) -> Optional[dict]:
  try:
    return json.loads(storage.read_text(path))
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # torn or foreign: treated as a holder that is gone


def _gone(holder: dict, path: str, stale_after: float) -> Optional[str]:
  """Why the holder of the lock at `path` is gone, or None while it may be alive."""
  if not holder or "pid" not in holder:
    return "the lock file is unreadable"
  if holder.get("host") == socket.gethostname():
    if not _alive(int(holder["pid"]), holder.get("process_start")):
      return f"process {holder['pid']} no longer exists"
    return None
  try:
    age = time.time() - storage.modified_time(path)
  except FileNotFoundError:
    return "it was released"
  if age > stale_after:
    return f"its last heartbeat was {age:.0f} s ago (over {stale_after:.0f} s)"
  return None


def acquire(workdir: str, *, stale_after: float = STALE_AFTER_SECONDS,
            log: Callable[[str], None] = print) -> Lock:
  """Takes the workdir's lock, or raises WorkdirLocked naming the live holder.

  Creation is exclusive (O_EXCL on a disk, a conditional upload on an object
  store), so of two runs starting together one wins.
  A lock whose holder is gone is taken over, with one line saying why.
  """
  path = storage.join(workdir, FILENAME)
  holder = {"host": socket.gethostname(), "pid": os.getpid(),
            "process_start": _process_start(os.getpid()), "started": time.time(),
            "token": f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"}
  for _ in range(3):  # a takeover race with another rerun: look again
    if not storage.create_exclusive(path, json.dumps(holder).encode()):
      current = _read(path)
      if current is None:
        continue  # released between the two calls
      why = _gone(current, path, stale_after)
      if why is None:
        raise WorkdirLocked(
            f"{workdir} is in use by another run ({describe(current)}); wait for it to "
            f"finish or stop it, or use another --workdir. The lock is {path}.")
      log(f"taking over the lock of a run that is gone ({describe(current)}: {why})")
      storage.path(path).unlink(missing_ok=True)
      continue
    lock = Lock(path, holder)
    lock.start_heartbeat()
    return lock
  raise WorkdirLocked(f"could not take the lock {path}: other runs keep taking it.")


@contextlib.contextmanager
def hold(workdir: str, log: Callable[[str], None] = print) -> Iterator[Optional[Lock]]:
  """Holds the workdir's lock for the `with` block: process 0 takes it, the others
  follow its decision (all raise WorkdirLocked when it could not)."""
  import jax
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = acquire(workdir, log=log)
    except WorkdirLocked as e:
      error = e
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils
    taken = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not taken and error is None:
      error = WorkdirLocked(f"{workdir} is in use by another run (process 0 says which).")
  if error is not None:
    raise error
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
