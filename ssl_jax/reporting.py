"""Run reporting at the edge: progress bar, JSON-lines metrics, TensorBoard events.

TensorBoard event files are written by tensorboardX (protobuf only, no
TensorFlow: the accelerator machines have none). Where tensorboardX is not
installed, runs log metrics.jsonl alone and say so once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping, Optional


class TensorBoardWriter:
  """Scalar summaries in `<logdir>/events.out.tfevents.*`, through tensorboardX."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter
    self._writer = SummaryWriter(logdir)

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    for tag, v in values.items():
      self._writer.add_scalar(tag, float(v), int(step))
    # Written now, not at tensorboardX's next timed flush: a crash loses no line.
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _tensorboard(logdir: str) -> Optional[TensorBoardWriter]:
  try:
    return TensorBoardWriter(logdir)
  except ImportError:
    print("note: tensorboardX is not installed, so no TensorBoard events are written "
          "(metrics.jsonl has every record); pip install tensorboardX to get them.",
          file=sys.stderr)
    return None


class MetricWriter:
  """Writes each record to `<workdir>/metrics.jsonl` and to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if enabled:
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = _tensorboard(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, values: Mapping[str, float], **extra) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **extra, **{k: float(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.scalars(step, {k: v for k, v in values.items() if v is not None})

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def format_seconds(s: float) -> str:
  s = int(max(s, 0))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
  """A one-line progress bar with metrics, images/s and ETA.

  Redraws in place on a terminal; elsewhere (CI logs, files) prints a line
  about every 10% so logs stay short.
  """

  def __init__(self, total: int, desc: str, images_per_step: int, stream=None,
               enabled: bool = True, delay: float = 0.0):
    self.total, self.desc, self.images_per_step = total, desc, images_per_step
    self.enabled = enabled  # False in every process but the first of a multi-process run
    # Nothing is drawn until `delay` seconds have passed: work that ends
    # sooner (evaluating a small split) leaves no lines in the log.
    self.delay = delay
    self.stream = stream or sys.stderr  # looked up now: tests and callers may redirect it
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.start = time.perf_counter()
    self.count = 0
    self._last_line = -1

  def update(self, count: int, metrics: Optional[Mapping[str, float]] = None) -> None:
    self.count = count
    elapsed = time.perf_counter() - self.start
    if not self.enabled or elapsed < self.delay:
      return
    rate = count * self.images_per_step / elapsed if elapsed > 0 else 0.0
    eta = (self.total - count) * elapsed / count if count else 0.0
    width = 24
    done = int(width * count / max(self.total, 1))
    text = " ".join(f"{k} {v:.4g}" for k, v in (metrics or {}).items())
    line = (f"{self.desc} [{'#' * done}{'.' * (width - done)}] {count}/{self.total} {text} "
            f"{rate:,.0f} img/s eta {format_seconds(eta)}")
    if self.tty:
      self.stream.write("\r" + line + "\033[K")
      if count >= self.total:
        self.stream.write("\n")
      self.stream.flush()
    else:
      tenth = 10 * count // max(self.total, 1)
      if tenth != self._last_line or count >= self.total:
        self._last_line = tenth
        print(line, file=self.stream, flush=True)
