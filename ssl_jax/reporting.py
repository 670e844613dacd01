"""Run reporting at the edge: progress bar, JSON-lines metrics, TensorBoard events.

The TensorBoard writer is a small self-contained implementation of the event
file format (TFRecord framing of `Event` protos with scalar summaries), so runs
log the same files with or without TensorFlow installed.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from typing import Mapping, Optional


def _crc32c_table():
  poly, table = 0x82F63B78, []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ poly if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
  return _varint((number << 3) | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
  return _field(number, 2, _varint(len(data)) + data)


def _event(wall_time: float, step: int, *, file_version: Optional[str] = None,
           scalars: Optional[Mapping[str, float]] = None) -> bytes:
  msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version is not None:
    msg += _bytes_field(3, file_version.encode())
  if scalars:
    values = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(v))))
        for tag, v in scalars.items())
    msg += _bytes_field(5, values)
  return msg


class TensorBoardWriter:
  """Appends scalar summaries to `<logdir>/events.out.tfevents.*`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self._f = open(os.path.join(logdir, name), "ab")
    self._write(_event(time.time(), 0, file_version="brain.Event:2"))

  def _write(self, record: bytes) -> None:
    header = struct.pack("<Q", len(record))
    self._f.write(header + struct.pack("<I", _masked_crc32c(header)) + record
                  + struct.pack("<I", _masked_crc32c(record)))

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    self._write(_event(time.time(), int(step), scalars=values))
    self._f.flush()

  def close(self) -> None:
    self._f.close()


class MetricWriter:
  """Writes each record to `<workdir>/metrics.jsonl` and to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if enabled:
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = TensorBoardWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, values: Mapping[str, float], **extra) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **extra, **{k: float(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    self._tb.scalars(step, {k: v for k, v in values.items() if v is not None})

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
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
