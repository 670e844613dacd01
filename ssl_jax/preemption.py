"""SIGTERM and Ctrl-C: finish the current step, checkpoint, exit with a resume hint.

Preemptible TPUs and shared GPU schedulers send SIGTERM shortly before they
kill a job; a user at a terminal presses Ctrl-C (SIGINT). Both are handled the
same way: the handler only records the request, and the training loop checks
it after every step, writes a checkpoint and raises `Preempted` (exit status
143 after SIGTERM, 130 after Ctrl-C). A second Ctrl-C stops the process at
once, without a checkpoint, and says so: the rerun resumes from the last
checkpoint written before it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Optional

# Exit status of a stopped run: 128 + the signal, what shells and schedulers
# report for a job ended by it, so restart policies treat it as unfinished.
EXIT_CODE = 128 + signal.SIGTERM
INTERRUPT_EXIT_CODE = 128 + signal.SIGINT
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


class Preempted(Exception):
  """Raised after the checkpoint of a run stopped by SIGTERM or Ctrl-C is written."""

  def __init__(self, message: str, signum: Optional[int] = signal.SIGTERM):
    super().__init__(message)
    self.exit_code = INTERRUPT_EXIT_CODE if signum == signal.SIGINT else EXIT_CODE
    self.label = "interrupted" if signum == signal.SIGINT else "preempted"


def signal_name(signum: Optional[int]) -> str:
  return _NAMES.get(signum, "a stop signal in another process")


class StopRequest:
  """Remembers whether SIGTERM or Ctrl-C arrived; installs itself only in the main thread.

  A second Ctrl-C ends the process at once (`os._exit`): whatever the loop
  is doing, no checkpoint is written, and one line says so.
  """

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous: dict = {}

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    if signum == signal.SIGINT:
      if self.signum == signal.SIGINT:
        print("\nstopped by a second Ctrl-C at once, without a checkpoint: rerun the same "
              "command to resume from the last checkpoint.", file=sys.stderr, flush=True)
        os._exit(INTERRUPT_EXIT_CODE)
      print("\nCtrl-C: finishing this step and writing a checkpoint (press Ctrl-C again to "
            "stop at once, without one)...", file=sys.stderr, flush=True)
    if self.signum is None:
      self.signum = signum

  @property
  def requested(self) -> bool:
    return self.signum is not None
