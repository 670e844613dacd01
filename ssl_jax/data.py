"""Datasets: `folder:` and `tfds:` sources, instance indices, subsets, device batches.

A split is decoded once into host memory as uint8 `[N, S, S, 3]` (images resized
to `config.data.image_size`) with int32 labels; example i of the training split
is instance i, the row of the memory bank it owns. Training batches are drawn
from a per-epoch permutation seeded by `(seed, epoch)`, so the data order is a
pure function of the seed, the epoch and the step: a resumed run, or a run on
another device or process count, sees the same global batches.

Sources:
  folder:<path>  an image-folder tree `<split>/<class>/<image>`, or a .tar.gz of
                 one. Read with Pillow and NumPy alone: no TensorFlow needed.
  tfds:<name>    any TFDS image classification dataset (cifar10, cifar100,
                 stl10, imagenet2012...), decoded through tf.data. TensorFlow is
                 imported only here.

Several processes (see `ssl_jax.distributed`): the instances of a split are
cut into `num_shards` contiguous shards (by default one per process) and each
process decodes only the rows of its own shards; instance indices stay global.
Each shard draws its own per-epoch permutation and contributes
`global_batch / num_shards` examples to every global batch, so the data order
is a function of (seed, epoch, num_shards): one process with
`config.data.shards=2` sees exactly the global batches of a 2-process run.

The in-memory design fits CIFAR, STL-10 and the small-data regime the method
targets (CIFAR-10 at 32x32 is 150 MB). ImageNet at 224x224 does not fit in host
memory this way: `ssl_jax.stream` (config.data.stream) reads records per step
instead, with the same layout and order (its split's `images` decode on access).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
from typing import Iterator, Optional

import numpy as np

from ssl_jax import sources
from ssl_jax import storage

from ssl_jax.sources import DataError  # noqa: F401  (raised here too; part of this API)


@dataclasses.dataclass(frozen=True)
class Layout:
  """How the N instances of a split are divided among shards and processes.

  Shard s holds the contiguous instances [lo_s, hi_s) (sizes differ by at
  most one); process p holds shards [p * S / P, (p + 1) * S / P), so its rows
  are contiguous too.
  """
  num_examples: int
  num_shards: int = 1
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if self.num_shards < 1 or self.num_shards % self.process_count:
      raise ValueError(f"config.data.shards ({self.num_shards}) must be a positive multiple "
                       f"of the process count ({self.process_count}).")
    if self.num_shards > 1 and self.num_examples < self.num_shards:
      raise DataError(f"a split of {self.num_examples} examples cannot be cut into "
                      f"{self.num_shards} shards.")

  def shard_bounds(self, shard: int) -> tuple[int, int]:
    n, s = self.num_examples, self.num_shards
    return shard * n // s, (shard + 1) * n // s

  @property
  def local_shards(self) -> range:
    per = self.num_shards // self.process_count
    return range(self.process_index * per, (self.process_index + 1) * per)

  @property
  def local_bounds(self) -> tuple[int, int]:
    """[lo, hi): the instances this process holds."""
    return (self.shard_bounds(self.local_shards[0])[0],
            self.shard_bounds(self.local_shards[-1])[1])

  def process_bounds(self, process: int) -> tuple[int, int]:
    return dataclasses.replace(self, process_index=process).local_bounds


@dataclasses.dataclass
class Split:
  """This process's rows of one decoded split.

  images: uint8 [n, S, S, 3]; labels: int32 [n]; row r is instance
  `layout.local_bounds[0] + r` of the split's `layout.num_examples`.
  """
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  # Position of each row in the full split before `subset` (for fractions).
  source_index: Optional[np.ndarray] = None
  layout: Optional[Layout] = None  # None: one process holding the whole split
  # Completed embedding passes over the split (`evaluate.extract_features`):
  # a run logs how many it made over the training data before its first step.
  passes: int = 0

  def __post_init__(self):
    if self.layout is None:
      self.layout = Layout(len(self))

  def __len__(self) -> int:
    """Rows held by this process (== num_examples with one process)."""
    return int(self.images.shape[0])

  @property
  def num_examples(self) -> int:
    """Instances in the whole split, over all processes: the bank's row count."""
    return self.layout.num_examples

  @property
  def offset(self) -> int:
    return self.layout.local_bounds[0]


def parse_source(source: str) -> tuple[str, str]:
  """'folder:<path>' or 'tfds:<name>' -> (kind, argument)."""
  kind, sep, arg = source.partition(":")
  if not sep or kind not in ("folder", "tfds") or not arg:
    raise ValueError(
        f"config.data.source must be 'folder:<path>' or 'tfds:<name>', got {source!r}.")
  return kind, arg



def _cache_path(cache_dir: str, source: str, split: str, size: int) -> Optional[str]:
  """The cache file of a folder source's decoded split (local or gs://), or None."""
  kind, path = parse_source(source)
  if kind != "folder" or not cache_dir:
    return None
  if storage.is_remote(path):
    # An object store has no folders to stat: a folder is keyed by its path alone
    # (an archive by its size and update time).
    source = storage.path(path)
    st = source.stat() if source.is_file() else None
    stamp = f"{st.length}|{st.mtime}" if st else "folder"
  else:
    st = os.stat(path)
    path, stamp = os.path.abspath(path), f"{st.st_size}|{st.st_mtime_ns}"
  key = f"{path}|{stamp}|{split}|{size}|v1"
  return storage.join(storage.absolute(cache_dir),
                      hashlib.sha1(key.encode()).hexdigest()[:16] + ".npz")


def _read_cache(cache: str) -> tuple[Split, int]:
  with np.load(io.BytesIO(storage.read_bytes(cache))) as f:
    return Split(f["images"], f["labels"], tuple(f["class_names"].tolist())), int(f["skipped"])


def load_split(data_cfg, split: str, log=print) -> tuple[Split, int]:
  """Decodes `split` of `data_cfg.source`; returns (split, count of skipped files).

  Folder sources are cached decoded in `data_cfg.cache_dir` (keyed by path,
  size, mtime, split and image size), so a second run starts in a second.
  """
  kind, arg = parse_source(data_cfg.source)
  size = int(data_cfg.image_size)
  if kind == "tfds":
    return Split(*sources.decode_tfds(arg, split, size, data_cfg.get("tfds_data_dir") or None)), 0
  check_source(arg)
  cache = _cache_path(data_cfg.get("cache_dir", ""), data_cfg.source, split, size)
  if cache is not None and storage.exists(cache):
    return _read_cache(cache)
  log(f"decoding {split} split of {arg} (cached afterwards)")
  result, skipped = sources.decode_folder(arg, split, size,
                                          bool(data_cfg.get("skip_corrupt", False)), log)
  result = Split(*result)
  if cache is not None:
    storage.path(cache).parent.mkdir(parents=True, exist_ok=True)
    # Written whole (a rename on a disk, one upload on an object store): a
    # crash never leaves a half-written cache.
    storage.save_npz(cache, images=result.images, labels=result.labels,
                     class_names=np.asarray(result.class_names), skipped=skipped)
  return result, skipped


def check_source(arg: str) -> None:
  """DataError (one line) unless the folder source `arg` exists and can be read."""
  try:
    storage.check_readable(arg, "config.data.source")
  except (FileNotFoundError, storage.StorageError) as e:
    raise DataError(str(e)) from None


def subset_positions(n: int, fraction: float, seed: int) -> np.ndarray:
  """Sorted positions of a fixed seeded subset of round(fraction * n) of n examples."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"config.data.fraction must be in (0, 1], got {fraction}.")
  if fraction == 1.0:
    return np.arange(n)
  k = max(1, int(round(fraction * n)))
  return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def subset(split: Split, fraction: float, seed: int) -> Split:
  """A fixed seeded subset of round(fraction * N) examples, kept in original order.

  The subset's example j is instance j (the bank has one row per kept image);
  `source_index` records where it came from in the full split.
  """
  keep = subset_positions(len(split), fraction, seed)
  return Split(split.images[keep], split.labels[keep], split.class_names, keep)


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """Sorted indices into `labels` [N]: `per_class` rows of every class (all, where fewer).

  Class c's rows are taken in the order of a permutation keyed by (seed, c),
  so a smaller `per_class` with the same seed gives a subset of a larger one.
  """
  if per_class < 1:
    raise ValueError(f"per_class must be >= 1, got {per_class}.")
  labels = np.asarray(labels)
  chosen = []
  for c in np.unique(labels):
    rows = np.flatnonzero(labels == c)
    order = np.random.default_rng([int(seed), int(c) & 0x7FFFFFFF]).permutation(len(rows))
    chosen.append(rows[order[:per_class]])
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def labels_per_class(fraction: float, num_labels: int, num_classes: int) -> int:
  """Rows a class gets in a class-balanced `fraction` of `num_labels` labels: at least 1."""
  return max(1, int(round(float(fraction) * num_labels / max(num_classes, 1))))


def label_subset(split: Split, fraction: float, seed: int) -> Split:
  """A class-balanced `fraction` of a whole split's labelled rows (`config.data.label_fraction`).

  round(fraction x n / C) rows of each of the C classes (at least 1), the subset
  `evaluate.lowshot` draws for the label fraction `fraction` and seed `seed`;
  kept in split order, renumbered as instances 0..k-1 (one process).
  """
  if fraction == 1.0:
    return split
  per_class = labels_per_class(fraction, len(split), len(np.unique(split.labels)))
  keep = balanced_subset(split.labels, per_class, seed)
  index = split.source_index[keep] if split.source_index is not None else keep
  return Split(split.images[keep], split.labels[keep], split.class_names, index)


def load_shard(data_cfg, split: str, *, fraction: float, seed: int, num_shards: int = 1,
               process_index: int = 0, process_count: int = 1,
               log=print) -> tuple[Split, int]:
  """This process's rows of a seeded `fraction` of `split`; returns (split, skipped files).

  With one process and a cache the whole split is decoded once and cached
  (later runs of any fraction start in a second). Otherwise a cached split is
  used if present, and else only this process's rows are decoded; with
  `skip_corrupt` the whole split is (the instance count depends on every file).
  """
  state = {}

  def keep(n: int) -> np.ndarray:
    positions = subset_positions(n, fraction, seed)
    layout = Layout(len(positions), num_shards, process_index, process_count)
    lo, hi = layout.local_bounds
    state.update(layout=layout, positions=positions[lo:hi])
    return positions[lo:hi]

  kind, arg = parse_source(data_cfg.source)
  cache = (_cache_path(data_cfg.get("cache_dir", ""), data_cfg.source, split,
                       int(data_cfg.image_size)) if kind == "folder" and storage.exists(arg)
           else None)
  whole = (bool(data_cfg.get("skip_corrupt", False))
           or (kind == "tfds" and process_count == 1)
           or (process_count == 1 and (cache is not None or fraction == 1.0))
           or (cache is not None and storage.exists(cache)))
  if whole:
    full, skipped = load_split(data_cfg, split, log)
    rows = keep(len(full))
    return Split(full.images[rows], full.labels[rows], full.class_names, rows,
                 state["layout"]), skipped
  if kind == "tfds":
    part = Split(*sources.decode_tfds(arg, split, int(data_cfg.image_size),
                                      data_cfg.get("tfds_data_dir") or None, keep))
  else:
    check_source(arg)
    part, _ = sources.decode_folder(arg, split, int(data_cfg.image_size), False, log, keep)
    part = Split(*part)
  log(f"decoded {len(part)} of the {state['layout'].num_examples} examples of '{split}' "
      f"(this process's share)")
  return dataclasses.replace(part, source_index=state["positions"], layout=state["layout"]), 0


def steps_per_epoch(num_examples: int, global_batch: int, num_shards: int = 1) -> int:
  """Full batches per epoch; each shard drops the remainder of its permutation."""
  return (num_examples // num_shards) // (global_batch // num_shards)


def epoch_permutation(num_examples: int, seed: int, epoch: int, shard: int = 0) -> np.ndarray:
  """The order of shard `shard` in epoch `epoch`: a pure function of (seed, epoch, shard).

  (Shard 0 draws from the same stream as an unsharded run, so single-process
  runs keep the order they had before shards existed.)
  """
  key = [seed, epoch] if shard == 0 else [seed, epoch, shard]
  return np.random.default_rng(key).permutation(num_examples)


def epoch_indices(layout: Layout, *, global_batch: int, num_local_devices: int, seed: int,
                  epoch: int) -> np.ndarray:
  """Global instance indices of this process's part of every batch of an epoch.

  Returns int32 [steps_per_epoch, D, b] with D local devices and
  b = global_batch / (process_count * D): step t is the concatenation, over
  this process's shards, of global_batch / num_shards examples of each
  shard's permutation (sorted within a shard).
  """
  per_shard = global_batch // layout.num_shards
  steps = steps_per_epoch(layout.num_examples, global_batch, layout.num_shards)
  parts = []
  for s in layout.local_shards:
    lo, hi = layout.shard_bounds(s)
    perm = lo + epoch_permutation(hi - lo, seed, epoch, s)[:steps * per_shard]
    parts.append(np.sort(perm.reshape(steps, per_shard), axis=1))
  ids = np.concatenate(parts, axis=1) if parts else np.zeros((steps, 0), np.int64)
  return ids.astype(np.int32).reshape(steps, num_local_devices, -1)


def train_batches(split: Split, *, global_batch: int, num_local_devices: int, seed: int,
                  epoch: int, start_step: int = 0) -> Iterator[dict]:
  """Yields this process's part of the global batches of one epoch, from `start_step` on.

  Each batch is {'image': uint8 [D, b, H, W, 3], 'index': int32 [D, b],
  'label': int32 [D, b]}; see `epoch_indices` for which examples.
  """
  table = epoch_indices(split.layout, global_batch=global_batch,
                        num_local_devices=num_local_devices, seed=seed, epoch=epoch)
  for ids in table[start_step:]:
    rows = ids - split.offset
    yield {"image": split.images[rows], "index": ids, "label": split.labels[rows]}


def _eval_rows_per_shard(layout: Layout, batch_size: int, num_local_devices: int) -> int:
  """Rows each shard adds to a global evaluation batch of about `batch_size`."""
  num_devices = num_local_devices * layout.process_count
  per_dev = max(1, batch_size // num_devices)
  # Rounded so that the global batch splits evenly over devices.
  q = num_devices // math.gcd(layout.num_shards, num_devices)
  return -(-(-(-per_dev * num_devices // layout.num_shards)) // q) * q


def _largest_shard(layout: Layout) -> int:
  return max(hi - lo for lo, hi in map(layout.shard_bounds, range(layout.num_shards)))


def num_eval_batches(split: Split, *, batch_size: int, num_local_devices: int) -> int:
  """How many batches `eval_batches` yields (the same in every process)."""
  m = _eval_rows_per_shard(split.layout, batch_size, num_local_devices)
  return -(-_largest_shard(split.layout) // m)


def eval_batches(split: Split, *, batch_size: int, num_local_devices: int) -> Iterator[dict]:
  """Every instance once, padded to full [D, b] batches; the same count in every process.

  Each global batch takes the next m instances of every shard, in order, with
  m about batch_size / num_shards. 'index' holds the global instance index
  and 'mask' is 1 for real examples and 0 for padding (which repeats the
  shard's first example), so callers drop padded rows after the forward pass.
  """
  layout = split.layout
  m = _eval_rows_per_shard(layout, batch_size, num_local_devices)
  largest = _largest_shard(layout)
  shape = (num_local_devices, m * len(layout.local_shards) // num_local_devices)
  plan = []
  for start in range(0, largest, m):
    ids, masks = [], []
    for s in layout.local_shards:
      lo, hi = layout.shard_bounds(s)
      i = lo + start + np.arange(m)
      masks.append(i < hi)
      ids.append(np.where(i < hi, i, lo))
    plan.append((np.concatenate(ids), np.concatenate(masks)))
  # A streamed split (ssl_jax.stream.RecordImages) decodes whole batches ahead.
  stream = getattr(split.images, "batches", None)
  images = (stream([ids for ids, _ in plan]) if stream is not None
            else (split.images[ids - split.offset] for ids, _ in plan))
  try:
    for (ids, mask), image in zip(plan, images):
      rows = ids - split.offset
      yield {"image": image.reshape(shape + split.images.shape[1:]),
             "label": split.labels[rows].reshape(shape),
             "index": ids.astype(np.int32).reshape(shape),
             "mask": mask.reshape(shape)}
  finally:
    getattr(images, "close", lambda: None)()  # a stream's workers stop here
