"""SIGTERM handling: finish the current step, checkpoint, exit with a resume hint.

Preemptible TPUs and shared GPU schedulers send SIGTERM shortly before they
kill a job. The handler only records the request; the training loop checks it
after every step, writes a checkpoint and raises `Preempted`.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

# Exit status of a preempted run: 128 + SIGTERM, what shells and schedulers
# report for a job ended by SIGTERM, so restart policies treat it as unfinished.
EXIT_CODE = 128 + signal.SIGTERM


class Preempted(Exception):
  """Raised after the checkpoint of a run that received SIGTERM is written."""


class StopRequest:
  """Remembers whether SIGTERM arrived; installs itself only in the main thread."""

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous = None

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame) -> None:
    self.signum = signum

  @property
  def requested(self) -> bool:
    return self.signum is not None
