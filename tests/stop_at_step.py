"""`python -m ssl_jax.main`, with signals sent at exact steps (a test tool, not part of the package).

    STOP_AT="SIGTERM@7" python tests/stop_at_step.py --config ... --workdir ...
    STOP_AT="SIGINT@9,SIGINT@9"    two Ctrl-C's right after step 9
    FILL_DISK_AT=11                after step 11, wait for pending saves, then fill the
                                   workdir's file system but for FILL_DISK_LEAVE bytes

The process signals itself right after the loop has taken the named step
(`ssl_jax.loop.Loop.add_step`), so a test can stop a run exactly at an epoch's end
or mid-way through a logging window, which a signal from outside, timed by
the files a run writes, cannot.
"""

import os
import pathlib
import runpy
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ssl_jax import checkpoint, loop  # noqa: E402

_STOPS = [(getattr(signal, s.split("@")[0]), int(s.split("@")[1]))
          for s in os.environ.get("STOP_AT", "").split(",") if s]
_FILL_AT = int(os.environ.get("FILL_DISK_AT", "0"))
_add_step = loop.Loop.add_step


def _fill(workdir: str, leave: int) -> None:
  free = os.statvfs(workdir).f_bavail * os.statvfs(workdir).f_frsize
  with open(os.path.join(workdir, "filler"), "wb") as f:
    f.write(b"\0" * max(free - leave, 0))


def add_step(self, *args, **kwargs):
  _add_step(self, *args, **kwargs)
  if self.step == _FILL_AT:
    checkpoint.finish_saves(self.manager)
    _fill(self.workdir, int(os.environ.get("FILL_DISK_LEAVE", "65536")))
  for sig, step in _STOPS:
    if step == self.step:
      os.kill(os.getpid(), sig)


loop.Loop.add_step = add_step
sys.argv[0] = "ssl_jax.main"
runpy.run_module("ssl_jax.main", run_name="__main__", alter_sys=True)
