"""The streaming input (`config.data.stream=True`): records read and decoded per step.

For data too large to decode into host memory (ImageNet at 224 px is about
190 GB as uint8). Every process opens the full split as a random-access
record source (`ssl_jax.records`), so a record's position is fixed, and its
bank row is the instance index `ssl_jax.data` assigns (after `data.fraction`'s
seeded subset). The order is the in-memory path's own: each process takes its
rows of `data.epoch_indices(...)`, so the global batches are the same for any
process count, worker count or resume point.

Host work per training example: read, decode and random-resized-crop to
`data.image_size` (Pillow, decoding JPEGs at a reduced scale when the crop
allows), one crop per view, keyed by (seed, step, instance index, view). Flip,
colour jitter, grayscale and blur stay on the device, as for in-memory data.
Evaluation streams the resize-and-centre-crop preprocessing.

Grain runs the pool: `MapDataset` over pieces of at most `CHUNK` rows of the
epoch's (step, instance) table (a batch is cut into pieces, so every worker
decodes part of the next batch instead of one worker decoding all of it),
`.map` to decode a piece, `.mp_prefetch` with `data.workers` worker processes
of one thread each (0: threads of this process). Grain hands the pieces back
in table order for any worker count, and this process joins each batch's
pieces with one copy. Workers run NumPy and Pillow only; JAX, imported there
by Grain, is pinned to the CPU.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Iterator

import numpy as np

from ssl_jax import data as data_lib
from ssl_jax import decoders
from ssl_jax import records as records_lib
from ssl_jax import sources
from ssl_jax.sources import DataError

SUBSTITUTE_GRAY = 128  # a record that does not decode, with data.skip_corrupt
# Images per task of a worker. Small enough that a batch spreads over many
# workers (its latency and the memory in flight stay those of a few pieces per
# worker), large enough that handing a piece back (shared memory, a pickle)
# costs little next to decoding it.
CHUNK = 16


def _grain():
  try:
    import grain
  except ImportError as e:
    raise ImportError("config.data.stream=True needs Grain (Python 3.11 or later): "
                      "pip install 'ssl_jax[stream]' (or '[tfds]').") from e
  from absl import flags
  if not flags.FLAGS.is_parsed():  # a library caller: Grain reads its flags' defaults
    flags.FLAGS.mark_as_parsed()
  return grain


@dataclasses.dataclass
class _Reader:
  """Reads and decodes records; picklable, so Grain's workers each hold one."""
  records: object
  positions: np.ndarray   # record position of each of this process's rows
  offset: int             # instance index of row 0
  size: int
  skip_corrupt: bool

  def load(self, index: int, decode, views: int = 0) -> tuple[np.ndarray, int]:
    """(decode(record bytes, name), 0), or (a gray substitute, 1) for a damaged record;
    the substitute is [S, S, 3], or [views, S, S, 3] when views > 0."""
    position = int(self.positions[int(index) - self.offset])
    name = self.records.name(position)
    try:
      return decode(self.records.read(position), name), 0
    except DataError as e:
      if not self.skip_corrupt:
        raise DataError(f"{e} ({self.records.description}, record {position}; set "
                        f"config.data.skip_corrupt=True to replace such records)") from None
    except Exception as e:  # a record that cannot be read at all
      if not self.skip_corrupt:
        raise DataError(f"cannot read {name}: {e}") from e
    shape = ((views,) if views else ()) + (self.size, self.size, 3)
    return np.full(shape, SUBSTITUTE_GRAY, np.uint8), 1


@dataclasses.dataclass
class _TrainPiece:
  """int64 [n, 2] (step, instance) rows -> {'image': uint8 [n, V, S, S, 3], 'index': int32 [n],
  'bad': int32 [n], 'seconds': float32 [n]} (seconds: each example's decode time).

  With decoder "simplejpeg" the images are the window canvases, uint8
  [n, V, 2S, 2S, 3], and 'box' float32 [n, V, 4] places each view's window
  (`decoders.decode_window`); a replaced record is a gray window of S x S.
  """
  reader: _Reader
  seed: int
  views: int
  scale: tuple[float, float]
  ratio: tuple[float, float]
  decoder: str = "pillow"

  def example(self, step: int, index: int, canvas: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, int, float]:
    """One example's views: host crops [V, S, S, 3], or (decoder "simplejpeg") windows
    written into `canvas` (zeros [V, 2S, 2S, 3]) and their boxes [V, 4]."""
    t0 = time.perf_counter()
    size, windows = self.reader.size, self.decoder == "simplejpeg"
    rng = lambda view: np.random.default_rng([self.seed, step, index, view])
    if windows:
      decoded: dict = {}  # the image decoded once for all its views
      views = lambda data, name: np.stack([decoders.decode_window(
          data, name, size, rng(v), self.scale, self.ratio, out=canvas[v], decoded=decoded)[1]
          for v in range(self.views)])
    else:
      views = lambda data, name: np.stack([decoders.decode_crop(
          data, name, size, rng(v), self.scale, self.ratio) for v in range(self.views)])
    out, bad = self.reader.load(index, views, self.views)  # the record is read once
    if not windows:
      return out, np.zeros((self.views, 0), np.float32), bad, time.perf_counter() - t0
    if bad:  # a gray window of S x S
      canvas[:] = SUBSTITUTE_GRAY
      out = np.tile(np.asarray([0, 0, size, size], np.float32), (self.views, 1))
    return canvas, out, bad, time.perf_counter() - t0

  def __call__(self, rows: np.ndarray) -> dict:
    windows = self.decoder == "simplejpeg"
    side = decoders.canvas_size(self.reader.size, self.decoder)
    # Windows are written in place: one zeroed buffer for the piece, no stacking copy.
    canvases = (np.zeros((len(rows), self.views, side, side, 3), np.uint8) if windows
                else [None] * len(rows))
    out = [self.example(int(step), int(index), canvas)
           for (step, index), canvas in zip(rows, canvases)]
    piece = {"image": canvases if windows else np.stack([o[0] for o in out]),
             "index": rows[:, 1].astype(np.int32),
             "bad": np.asarray([o[2] for o in out], np.int32),
             "seconds": np.asarray([o[3] for o in out], np.float32)}
    if windows:
      piece["box"] = np.stack([o[1] for o in out])
    return piece


@dataclasses.dataclass
class _EvalPiece:
  """Instance indices [n] -> uint8 [n, S, S, 3] centre crops, int32 [n] replaced."""
  reader: _Reader

  def __call__(self, ids: np.ndarray) -> dict:
    out = [self.reader.load(i, lambda data, name: sources.load_image(data, self.reader.size,
                                                                     name)) for i in ids]
    return {"image": np.stack([o[0] for o in out]),
            "bad": np.asarray([o[1] for o in out], np.int32)}


def _pieces(rows: np.ndarray) -> list[np.ndarray]:
  """One batch's rows cut into ceil(n / CHUNK) pieces of nearly equal size, in order."""
  return np.array_split(rows, -(-len(rows) // CHUNK)) if len(rows) else []


def _joined(pieces: Iterator[dict], counts: list[int]) -> Iterator[dict]:
  """Concatenates consecutive decoded pieces, counts[k] of them for batch k (one copy).

  Closes `pieces` (and so the workers) after the last batch or when closed early.
  """
  try:
    for n in counts:
      parts = [next(pieces) for _ in range(n)]
      yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  finally:
    getattr(pieces, "close", lambda: None)()


def _worker_init(worker_index: int, worker_count: int) -> None:
  """Keeps a worker that imported JAX (through ssl_jax) off the accelerators, and out
  of Ctrl-C: a terminal sends SIGINT to every process of its foreground group, and
  the training process, which checkpoints and then ends its workers, decides."""
  del worker_index, worker_count
  import signal
  import sys
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  if "jax" in sys.modules:
    sys.modules["jax"].config.update("jax_platforms", "cpu")


class WorkerDied(RuntimeError):
  """A data worker process ended without finishing its work (killed, out of memory)."""


def _iterate(dataset, workers: int, threads: int):
  """Grain's iterator over `dataset`, through `workers` processes of one thread each (0:
  `threads` threads here). One thread per worker: `data.workers=-1` is one worker per
  core, and a worker's decode time then measures its work, not its wait for a core."""
  grain = _grain()
  if workers > 0:
    threads = 1
  it = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                 prefetch_buffer_size=max(4 * threads, 4)))
  if workers > 0:
    # A few pieces ready per worker, so no worker waits for this process to take one.
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=4),
                        worker_init_fn=_worker_init)
  return iter(it)


def _guarded(it, workers: int) -> Iterator:
  """Yields from Grain's iterator; a dead worker becomes one line, then the iterator closes."""
  try:
    while True:
      try:
        out = next(it)
      except StopIteration:
        return
      except RuntimeError as e:
        if "terminated unexpectedly" not in str(e):
          raise
        raise WorkerDied(
            f"a data worker process died ({str(e).splitlines()[0]}); killed, or out of host "
            f"memory with config.data.workers={workers}? Rerun to resume from the last "
            f"checkpoint, with fewer workers if memory ran out.") from None
      yield out
  finally:
    getattr(it, "close", lambda: None)()


class RecordImages:
  """This process's rows of a streamed split, decoded on access (eval preprocessing).

  Stands where an in-memory split has its uint8 [n, S, S, 3] array: `shape`,
  `dtype`, `len()` and `images[rows]` work; `eval_batches` streams whole
  batches through Grain.
  """

  def __init__(self, reader: _Reader, workers: int):
    self.reader, self.workers = reader, workers
    self.dtype = np.dtype(np.uint8)
    # Instances whose record was replaced (data.skip_corrupt), over every pass.
    self.replaced: set[int] = set()

  @property
  def bad(self) -> int:
    """How many distinct records were replaced so far."""
    return len(self.replaced)

  def note_replaced(self, ids: np.ndarray, flags: np.ndarray) -> None:
    ids, flags = np.asarray(ids).reshape(-1), np.asarray(flags).reshape(-1)
    self.replaced.update(int(i) for i in ids[flags > 0])

  @property
  def shape(self) -> tuple[int, int, int, int]:
    s = self.reader.size
    return (len(self.reader.positions), s, s, 3)

  def __len__(self) -> int:
    return len(self.reader.positions)

  def __getitem__(self, rows) -> np.ndarray:
    ids = np.atleast_1d(np.arange(len(self))[rows]) + self.reader.offset
    out = _EvalPiece(self.reader)(ids)
    self.note_replaced(ids, out["bad"])
    return out["image"]

  def batches(self, ids: list[np.ndarray]) -> Iterator[np.ndarray]:
    """uint8 [len(ids[k]), S, S, 3] for each list of instance indices, in order."""
    grain = _grain()
    pieces = [_pieces(np.asarray(batch)) for batch in ids]
    ds = grain.MapDataset.source([p for batch in pieces for p in batch]).map(
        _EvalPiece(self.reader))
    batches = _joined(_guarded(_iterate(ds, self.workers, threads=4), self.workers),
                      [len(p) for p in pieces])
    # The stream first in zip: its last next() ends it, and its workers, at once.
    for out, batch_ids in zip(batches, ids):
      self.note_replaced(batch_ids, out["bad"])
      yield out["image"]


def worker_count(workers: int) -> int:
  """config.data.workers as a count: -1 is one per core this process may run on."""
  if workers != -1:
    return workers
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # platforms without CPU affinity (macOS)
    return os.cpu_count() or 1


def load_split(data_cfg, split: str, *, fraction: float, seed: int, num_shards: int = 1,
               process_index: int = 0, process_count: int = 1,
               log=print, cache_dir: str = "") -> data_lib.Split:
  """This process's rows of a seeded `fraction` of `split`, streamed: nothing is decoded yet.

  Labels are read here (free for folders: the class folder names them; a
  `tfds:` split's are read from its records once, then cached beside the
  data or under `cache_dir`, see `records.TfdsRecords.labels`).
  """
  records = records_lib.open_records(data_cfg.source, split,
                                     data_cfg.get("tfds_data_dir", ""))
  if len(records) == 0:
    raise DataError(f"{records.description} has no records.")
  positions = data_lib.subset_positions(len(records), fraction, seed)
  layout = data_lib.Layout(len(positions), num_shards, process_index, process_count)
  lo, hi = layout.local_bounds
  reader = _Reader(records, positions[lo:hi], lo, int(data_cfg.image_size),
                   bool(data_cfg.get("skip_corrupt", False)))
  images = RecordImages(reader, worker_count(int(data_cfg.get("workers", 0))))
  labels = records.labels(positions[lo:hi], log, cache_dir)
  pool = f"{images.workers} worker processes" if images.workers else "threads of this process"
  log(f"streaming {hi - lo} of the {layout.num_examples} examples of {records.description}"
      f" ({pool})")
  return data_lib.Split(images, labels, records.class_names, positions[lo:hi], layout)


class TrainStream:
  """The training batches of one epoch from `start_step` on, decoded by Grain's workers.

  Yields {'image': uint8 [D, b, S, S, 3] (views > 1: [D, b, V, S, S, 3]),
  'index': int32 [D, b]} as `data.train_batches` does for in-memory splits;
  with decoder "simplejpeg", window canvases [D, b, (V,) 2S, 2S, 3] and their
  'box' float32 [D, b, (V,) 4], which the step resizes (`augment.resize_windows`).
  `bad` counts this epoch's replaced records; `decode_seconds` sums the workers'
  decode time.
  """

  def __init__(self, split: data_lib.Split, *, global_batch: int, num_local_devices: int,
               seed: int, epoch: int, start_step: int, views: int,
               scale: tuple[float, float], ratio: tuple[float, float],
               decoder: str = "pillow"):
    images = split.images
    if not isinstance(images, RecordImages):
      raise TypeError("TrainStream needs a split loaded by ssl_jax.stream.load_split.")
    table = data_lib.epoch_indices(split.layout, global_batch=global_batch,
                                   num_local_devices=num_local_devices, seed=seed, epoch=epoch)
    # Crops are keyed by the global step (epoch * steps_per_epoch + t).
    first = epoch * table.shape[0] + start_step
    table = table[start_step:]
    self.steps, self.nd = table.shape[0], num_local_devices
    self.local_batch = int(np.prod(table.shape[1:]))
    step_of = np.repeat(np.arange(first, first + self.steps), self.local_batch)
    rows = np.stack([step_of, table.reshape(-1)], axis=1).astype(np.int64)
    self._pieces = [_pieces(batch) for batch in np.split(rows, self.steps)] if self.steps else []
    self._fn = _TrainPiece(images.reader, int(seed), int(views), tuple(scale), tuple(ratio),
                           decoder)
    self._workers, self._images = images.workers, images
    self.bad, self.decode_seconds = 0, 0.0

  def __iter__(self) -> Iterator[dict]:
    grain = _grain()
    ds = grain.MapDataset.source([p for batch in self._pieces for p in batch]).map(self._fn)
    pieces = _guarded(_iterate(ds, self._workers, threads=2), self._workers)
    for out in _joined(pieces, [len(p) for p in self._pieces]):
      self.bad += int(out["bad"].sum())
      self._images.note_replaced(out["index"], out["bad"])
      self.decode_seconds += float(out["seconds"].sum())
      batch = {"index": out["index"].reshape(self.nd, -1)}
      for key in ("image", "box"):
        if key in out:
          x = out[key][:, 0] if out[key].shape[1] == 1 else out[key]
          batch[key] = x.reshape((self.nd, -1) + x.shape[1:])
      yield batch
