"""A profiler window over chosen training steps.

`config.profile_steps=(START, COUNT)` records a `jax.profiler` trace of steps
START + 1 .. START + COUNT (the steps taken after START) into
`<workdir>/profile/`, which TensorBoard's profile plugin or Perfetto read.
The step's parts are named scopes (`augment`, `encoder`, `objective`,
`optimizer`), so the trace says where a step's time goes.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax

from ssl_jax import storage


def profile_window(config) -> Optional[tuple[int, int]]:
  """(first step, last step + 1) of `config.profile_steps`, or None when unset."""
  window = tuple(config.get("profile_steps", ()) or ())
  if not window:
    return None
  if len(window) != 2 or int(window[0]) < 0 or int(window[1]) < 1:
    raise ValueError(f"config.profile_steps must be (START, COUNT) with START >= 0 and "
                     f"COUNT >= 1, or () for none; got {window}.")
  return int(window[0]), int(window[0]) + int(window[1])


class Profiler:
  """Starts a trace before step `start` and stops it once step `stop - 1` has run."""

  def __init__(self, config, workdir: str, log: Callable[[str], None] = print):
    self.window = profile_window(config)
    self.folder = storage.absolute(storage.join(workdir, "profile"))
    self.log, self.running = log, False

  def before_step(self, step: int) -> None:
    """Call with the number of steps taken before dispatching the next one."""
    if self.window and step == self.window[0] and not self.running:
      jax.profiler.start_trace(self.folder)
      self.running = True

  def after_step(self, step: int, state) -> None:
    """Call with the number of steps taken; ends the trace when the window is done."""
    if self.running and step >= self.window[1]:
      self.stop(state)

  def stop(self, state=None) -> None:
    if not self.running:
      return
    if state is not None:
      jax.block_until_ready(state)   # the trace holds the steps' device work, not only dispatch
    jax.profiler.stop_trace()
    self.running = False
    self.log(f"profile of steps {self.window[0] + 1}..{self.window[1]} written to {self.folder}")
