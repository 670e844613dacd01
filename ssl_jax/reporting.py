"""Run reporting at the edge: progress bar, JSON-lines metrics, TensorBoard events.

TensorBoard event files are written by tensorboardX (protobuf only, no
TensorFlow: the accelerator machines have none; google-cloud-storage for
gs://). Where tensorboardX is not installed, runs log metrics.jsonl alone and
say so once.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Mapping, Optional

from ssl_jax import storage


class TensorBoardWriter:
  """Scalar summaries in `<logdir>/events.out.tfevents.*`, through tensorboardX."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter
    self._writer = SummaryWriter(logdir)

  def scalars(self, step: int, values: Mapping[str, float], flush: bool = True) -> None:
    for tag, v in values.items():
      self._writer.add_scalar(tag, float(v), int(step))
    if flush:  # now, not at tensorboardX's next timed flush: a crash loses no line
      self._writer.flush()

  def flush(self) -> None:
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
  """Writes each record to `<workdir>/metrics.jsonl` and to TensorBoard.

  On a disk each line is appended and flushed at once. An object store has no
  append: there the file is kept in memory and its object rewritten whole by
  `flush()` (the loop calls it before every checkpoint) and at most every
  FLUSH_SECONDS, so a crash loses only lines that resuming would drop anyway
  (those after the last checkpoint), and no reader ever sees a cut line.
  """

  FLUSH_SECONDS = 30.0

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    path = storage.join(workdir, "metrics.jsonl")
    self._remote = storage.is_remote(workdir)
    if self._remote:
      self._path, self._pending = path, False
      self._text = storage.read_text(path) if storage.exists(path) else ""
      self._flushed = time.monotonic()
    else:
      self._jsonl = open(path, "a")
    self._tb = _tensorboard(storage.join(workdir, "tensorboard"))

  def write(self, step: int, values: Mapping[str, float], **extra) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **extra, **{k: float(v) for k, v in values.items()}}
    line = json.dumps(record) + "\n"
    if self._tb is not None:
      self._tb.scalars(step, {k: v for k, v in values.items() if v is not None},
                       flush=not self._remote)
    if self._remote:
      self._text += line
      self._pending = True
      if time.monotonic() - self._flushed > self.FLUSH_SECONDS:
        self.flush()
    else:
      self._jsonl.write(line)
      self._jsonl.flush()

  def flush(self) -> None:
    """Makes every record so far durable (on a disk a no-op: lines are flushed as written)."""
    if not (self.enabled and self._remote):
      return
    if self._pending:
      storage.write_text_atomic(self._path, self._text)
      self._pending = False
    if self._tb is not None:
      self._tb.flush()
    self._flushed = time.monotonic()

  def close(self) -> None:
    if self.enabled:
      self.flush()
      if not self._remote:
        self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def count(n: int, noun: str) -> str:
  """`1 epoch`, `2 epochs`, `1 class`, `10 classes`: a number and its noun, agreeing."""
  if n == 1:
    return f"{n} {noun}"
  return f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"


def percent(fraction: float) -> str:
  """A top-1 accuracy the way the README and CLAIMS write it: 0.349 -> `34.90%`."""
  return f"{100 * fraction:.2f}%"


def format_seconds(s: float) -> str:
  s = int(max(s, 0))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
  """A one-line progress bar with metrics, images/s and ETA.

  Redraws in place on a terminal; elsewhere (CI logs, files) prints a line
  about every 10% so logs stay short.
  """

  def __init__(self, total: int, desc: str, images_per_step: int, stream=None,
               enabled: bool = True, delay: float = 0.0, show_rate: bool = True):
    self.total, self.desc, self.images_per_step = total, desc, images_per_step
    # False where a step is not a pass over images (the linear probe's epochs go
    # over stored features: their rate would not be an image rate).
    self.show_rate = show_rate
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
            + (f"{rate:,.0f} img/s " if self.show_rate else "") + f"eta {format_seconds(eta)}")
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


def freshness_line(record: Mapping[str, float]) -> Optional[str]:
  """The bank-freshness figures of an evaluation record in words, or None without them."""
  if "bank_cos_mean" not in record:
    return None
  line = (f"bank vs fresh embeddings of its probe images: cosine mean "
          f"{record['bank_cos_mean']:.3f}, 5th percentile {record['bank_cos_p5']:.3f}; "
          f"effective rank {record['bank_effective_rank']:.1f}")
  if "bank_steps_since_write_mean" in record:
    line += (f"; rows last written {record['bank_steps_since_write_mean']:.0f} steps ago on "
             f"average (at most {record['bank_steps_since_write_max']:.0f})")
  return line
