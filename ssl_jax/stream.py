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

Grain runs the pool: `MapDataset` over the epoch's (step, instance) table,
`.map` to decode, `.batch` (before the multiprocess stage, so the batches do
not depend on the worker count), `.mp_prefetch` with `data.workers` worker
processes (0: threads of this process). Workers run NumPy and Pillow only;
JAX, if imported there, is pinned to the CPU.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from typing import Iterator

import numpy as np

from ssl_jax import data as data_lib
from ssl_jax import records as records_lib
from ssl_jax import sources
from ssl_jax.sources import DataError

SUBSTITUTE_GRAY = 128  # a record that does not decode, with data.skip_corrupt


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


def crop_box(rng: np.random.Generator, w: int, h: int, scale: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[int, int, int, int]:
  """(left, top, width, height) of a random area fraction in `scale` with aspect in `ratio`.

  One draw, clipped to the image, as the device's `augment.random_resized_crop`.
  """
  area = w * h * rng.uniform(scale[0], scale[1])
  aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
  cw = int(min(w, max(1, round(math.sqrt(area * aspect)))))
  ch = int(min(h, max(1, round(math.sqrt(area / aspect)))))
  return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch


def decode_crop(data: bytes, name: str, size: int, rng: np.random.Generator,
                scale: tuple[float, float], ratio: tuple[float, float]) -> np.ndarray:
  """Encoded image -> uint8 [size, size, 3]: a random resized crop of the upright image."""
  from PIL import Image
  try:
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    orientation = img.getexif().get(0x0112, 1)
    if orientation in (5, 6, 7, 8):  # stored sideways: EXIF turns it
      w, h = h, w
    left, top, cw, ch = crop_box(rng, w, h, scale, ratio)
    shrink = min(cw, ch) / size
    if shrink >= 2 and img.format == "JPEG":
      # Decode at 1/2, 1/4 or 1/8 scale where the crop still has `size` pixels a side.
      img.draft("RGB", (math.ceil(img.size[0] / shrink), math.ceil(img.size[1] / shrink)))
    if orientation != 1 or img.mode != "RGB":  # (each conversion copies the image)
      img = sources.upright_rgb(img)
    sx, sy = img.size[0] / w, img.size[1] / h
    box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
    return np.asarray(img.resize((size, size), Image.BILINEAR, box=box), np.uint8)
  except Exception as e:  # Pillow raises many types on damaged files
    raise DataError(f"cannot decode image {name}: {e}") from e


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
class _TrainExample:
  """(step, instance) -> {'image': uint8 [V, S, S, 3], 'index', 'bad', 'seconds'}."""
  reader: _Reader
  seed: int
  views: int
  scale: tuple[float, float]
  ratio: tuple[float, float]

  def __call__(self, element: np.ndarray) -> dict:
    t0 = time.perf_counter()
    step, index = int(element[0]), int(element[1])
    crops = lambda data, name: np.stack([decode_crop(
        data, name, self.reader.size, np.random.default_rng([self.seed, step, index, view]),
        self.scale, self.ratio) for view in range(self.views)])
    image, bad = self.reader.load(index, crops, self.views)  # the record is read once
    return {"image": image, "index": np.int32(index), "bad": np.int32(bad),
            "seconds": np.float32(time.perf_counter() - t0)}


@dataclasses.dataclass
class _EvalBatch:
  """Rows of one evaluation batch -> uint8 [n, S, S, 3] centre crops, int32 [n] replaced."""
  reader: _Reader

  def __call__(self, ids: np.ndarray) -> dict:
    out = [self.reader.load(i, lambda data, name: sources.load_image(data, self.reader.size,
                                                                     name)) for i in ids]
    return {"image": np.stack([o[0] for o in out]),
            "bad": np.asarray([o[1] for o in out], np.int32)}


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
  """Grain's iterator over `dataset`, through `workers` processes (0: threads here)."""
  grain = _grain()
  it = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                 prefetch_buffer_size=max(4 * threads, 8)))
  if workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
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
    out = _EvalBatch(self.reader)(ids)
    self.note_replaced(ids, out["bad"])
    return out["image"]

  def batches(self, ids: list[np.ndarray]) -> Iterator[np.ndarray]:
    """uint8 [len(ids[k]), S, S, 3] for each list of instance indices, in order."""
    grain = _grain()
    ds = grain.MapDataset.source(ids).map(_EvalBatch(self.reader))
    # The stream first in zip: its last next() ends it, and its workers, at once.
    for out, batch_ids in zip(_guarded(_iterate(ds, self.workers, threads=4), self.workers), ids):
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
  'index': int32 [D, b]} as `data.train_batches` does for in-memory splits.
  `bad` counts this epoch's replaced records; `decode_seconds` sums the workers'
  decode time.
  """

  def __init__(self, split: data_lib.Split, *, global_batch: int, num_local_devices: int,
               seed: int, epoch: int, start_step: int, views: int,
               scale: tuple[float, float], ratio: tuple[float, float]):
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
    self._elements = np.stack([step_of, table.reshape(-1)], axis=1).astype(np.int64)
    self._fn = _TrainExample(images.reader, int(seed), int(views), tuple(scale), tuple(ratio))
    self._workers, self._images = images.workers, images
    self.bad, self.decode_seconds = 0, 0.0

  def __iter__(self) -> Iterator[dict]:
    grain = _grain()
    ds = (grain.MapDataset.source(self._elements).map(self._fn)
          .batch(self.local_batch, drop_remainder=True))
    for out in _guarded(_iterate(ds, self._workers, threads=2), self._workers):
      self.bad += int(out["bad"].sum())
      self._images.note_replaced(out["index"], out["bad"])
      self.decode_seconds += float(out["seconds"].sum())
      image = out["image"]
      if image.shape[1] == 1:
        image = image[:, 0]
      yield {"image": image.reshape((self.nd, -1) + image.shape[1:]),
             "index": out["index"].reshape(self.nd, -1)}
