"""The epoch loop's mutable run state and the actions that change it (`Loop`).

`ssl_jax.train` drives it: after every step the loop asks it to log, to
checkpoint (each step at most once, whichever cadence or stop asks) and,
after SIGTERM or Ctrl-C, to stop with a checkpoint. Logging windows close at
fixed steps (every log_every_steps and at each epoch's end), and the sums of
a window open at a mid-epoch checkpoint are kept beside it, so a resumed run
logs what an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from ssl_jax import builders
from ssl_jax import checkpoint
from ssl_jax import data as data_lib
from ssl_jax import devices
from ssl_jax import preemption
from ssl_jax import reporting
from ssl_jax import run_files
from ssl_jax import steps
from ssl_jax import storage
from ssl_jax.state import TrainState


@dataclasses.dataclass
class Loop:
  """The epoch loop's mutable run state and the actions that change it.

  Fixed for the run: config, workdir, the training split, the schedule, the
  checkpoint manager and the metric writer. Changed as it goes: the state and
  its step, the epoch being run and where in it this process started, the
  epoch's clock and carried-over time (an epoch resumed mid-way), the
  progress bar, metric sums kept on device since the last fetch, and the
  history of epoch records.
  """
  config: ml_collections.ConfigDict
  workdir: str
  train: data_lib.Split
  steps_per_epoch: int
  schedule: Callable
  manager: Any
  writer: reporting.MetricWriter
  is_main: bool
  state: TrainState
  step: int
  history: list
  flops_plan: dict = dataclasses.field(default_factory=dict)  # compute.plan's, with a budget
  carried: tuple = (0.0, 0)
  epoch: int = 0
  start: int = 0
  t_epoch: float = 0.0
  progress: Optional[reporting.Progress] = None
  acc: Optional[dict] = None
  # Where the current logging window's clock started: (seconds, step).
  log_clock: tuple = (0.0, 0)
  # Seconds from this process's start to its first step done (None: no step ran).
  first_step_seconds: Optional[float] = None

  def begin_epoch(self) -> None:
    self.epoch, self.start = divmod(self.step, self.steps_per_epoch)

  def start_clock(self) -> None:
    self.progress = reporting.Progress(
        self.steps_per_epoch - self.start, f"epoch {self.epoch + 1}/{self.config.num_epochs}",
        int(self.config.batch_size), enabled=self.is_main)
    self.t_epoch = time.perf_counter()
    self.log_clock = (self.t_epoch, self.step)

  def add_step(self, state: TrainState, sums: dict) -> None:
    self.state = state
    self.acc = sums if self.acc is None else steps.accumulate_metrics(self.acc, sums)
    self.step += 1

  def _diverged(self, bad: int) -> FloatingPointError:
    return FloatingPointError(
        f"non-finite loss, gradient or bank at step {bad}; stopped without "
        f"saving it. The last good checkpoint is kept: step {self.manager.latest_step()} in "
        f"{self.manager.directory}. Lower optim.base_lr or bank.lr and rerun to resume from it.")

  def fetch_metrics(self) -> Optional[dict]:
    """Brings the accumulated metrics to the host; stops the run if any step diverged."""
    if self.acc is None:
      return None
    m, self.acc = steps.reduce_metrics(self.acc), None
    if m["first_bad_step"] is not None:
      raise self._diverged(m["first_bad_step"])
    del m["first_bad_step"], m["nonfinite"]
    return m

  def open_window(self) -> Optional[dict]:
    """The sums of the logging window still open at this step, on the host, as
    `run_files.record_epoch_time` keeps them; the window stays open. Stops the
    run if any of its steps diverged (a diverged state is never saved)."""
    if self.acc is None:
      return None
    self.acc = devices.unreplicate(self.acc)   # host NumPy: later steps add to it
    if int(self.acc["first_bad_step"]) != steps.NO_BAD_STEP:
      raise self._diverged(int(self.acc["first_bad_step"]))
    return {k: [np.asarray(v).item(), np.asarray(v).dtype.name] for k, v in self.acc.items()}

  def at_log_boundary(self) -> bool:
    """Whether a logging window ends at this step: every log_every_steps steps and at
    every epoch's end, whatever checkpoints or stops happen between, so a resumed
    run logs the same records as an uninterrupted one."""
    return (self.step % self.config.log_every_steps == 0
            or self.step % self.steps_per_epoch == 0)

  def fetch_and_log(self) -> None:
    m = self.fetch_metrics()
    if m is not None:
      m["lr"] = float(self.schedule(self.step - 1))
      # Wall-clock seconds per step since the last record or this epoch's start
      # here (the fetch waited for the window's last step; a process's first
      # window includes compiling the step).
      now, (t0, step0) = time.perf_counter(), self.log_clock
      if self.step > step0:
        m["step_seconds"] = (now - t0) / (self.step - step0)
      self.log_clock = (now, self.step)
      self.writer.write(self.step, m, epoch=(self.step - 1) // self.steps_per_epoch + 1)
      self.progress.update(self.step - self.epoch * self.steps_per_epoch - self.start,
                           {"loss": m["loss"]})

  def epoch_seconds(self) -> tuple[float, int]:
    """(seconds, steps) of the current epoch so far, over every process that ran it."""
    return (self.carried[0] + time.perf_counter() - self.t_epoch,
            self.carried[1] + self.step - self.epoch * self.steps_per_epoch - self.start)

  def save_checkpoint(self) -> None:
    """Checkpoints the state at this step, once: a step that both cadences (or a
    stop) ask for is written by the first to ask. A full disk raises
    storage.DiskFull, whichever file it stopped."""
    if self.manager.latest_step() == self.step:
      return  # checkpoint.save would skip it too, after a needless device_get of the state
    window = None
    if self.at_log_boundary():
      self.fetch_and_log()
    else:
      window = self.open_window()
    saved = builders.saved_state(self.config, self.state, self.train.num_examples)
    try:
      if self.step % self.steps_per_epoch and self.is_main:
        # saved_state waited for the step, so this is the epoch's time so far.
        run_files.record_epoch_time(self.workdir, self.step, *self.epoch_seconds(),
                                    metric_sums=window)
      # Every record up to this step is durable before the checkpoint that keeps
      # them on resume (on an object store the log is written at flushes only).
      self.writer.flush()
    except OSError as e:
      if not storage.is_disk_full(e):
        raise
      raise storage.DiskFull(
          f"no space left on device in {self.workdir} while writing the files of the "
          f"checkpoint at step {self.step}; the checkpoint of step "
          f"{self.manager.latest_step()} is kept: free some space and rerun the same command "
          f"to resume from it.") from None
    checkpoint.save(self.manager, saved)

  def preempt(self, stop: preemption.StopRequest) -> None:
    what = preemption.signal_name(stop.signum)
    try:
      self.save_checkpoint()
      checkpoint.finish_saves(self.manager)
    except storage.DiskFull as e:
      raise storage.DiskFull(f"{what} at step {self.step}, but its checkpoint could not be "
                             f"written: {e}") from None
    raise preemption.Preempted(
        f"{'stopped by' if stop.signum == signal.SIGINT else 'received'} {what}: checkpoint "
        f"saved at step {self.step} in {self.manager.directory}. Rerun the same command to "
        f"resume.", stop.signum)

  def stop_agreed(self, stop: preemption.StopRequest, *, at_epoch_end: bool = False) -> bool:
    """Whether to stop after this step; the same answer in every process at the same step.

    One process: its own SIGTERM flag, at every step (nothing waits for the
    devices). Several: every `config.preemption_check_steps` steps and at each
    epoch's end, the processes gather their flags (`devices.any_process`), so a
    process that received SIGTERM makes all of them stop after the same step,
    at most that many steps after the signal. Between checks nothing is read
    and no collective is added to the step, so steps stay in flight.
    """
    if jax.process_count() == 1:
      return stop.requested
    if not at_epoch_end and self.step % int(self.config.get("preemption_check_steps", 1)):
      return False
    return devices.any_process(stop.requested)
