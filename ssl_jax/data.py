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

The in-memory design fits CIFAR, STL-10 and the small-data regime the method
targets (CIFAR-10 at 32x32 is 150 MB). ImageNet at 224x224 does not fit in host
memory this way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pathlib
import tarfile
from typing import Iterator, Optional

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class DataError(ValueError):
  """Bad input data: names the file or folder at fault."""


@dataclasses.dataclass
class Split:
  """One decoded split. images: uint8 [N, S, S, 3]; labels: int32 [N]."""
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  # Position of each example in the full split before `subset` (for fractions).
  source_index: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return int(self.images.shape[0])


def parse_source(source: str) -> tuple[str, str]:
  """'folder:<path>' or 'tfds:<name>' -> (kind, argument)."""
  kind, sep, arg = source.partition(":")
  if not sep or kind not in ("folder", "tfds") or not arg:
    raise ValueError(
        f"config.data.source must be 'folder:<path>' or 'tfds:<name>', got {source!r}.")
  return kind, arg


def _to_rgb_array(img, size: int, name: str) -> np.ndarray:
  """PIL image (any mode, any size) -> uint8 [size, size, 3].

  Grayscale, palette and RGBA images are converted to RGB (alpha dropped).
  Non-square or other-sized images are resized so the short side is `size`,
  then centre-cropped: the usual evaluation transform, applied once at decode.
  """
  from PIL import Image  # Pillow is a core dependency; imported here to keep import light.
  try:
    img = img.convert("RGB")
    w, h = img.size
    if (w, h) != (size, size):
      s = size / min(w, h)
      nw, nh = max(size, round(w * s)), max(size, round(h * s))
      img = img.resize((nw, nh), Image.BILINEAR)
      left, top = (nw - size) // 2, (nh - size) // 2
      img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, np.uint8)
  except Exception as e:  # Pillow raises many types on truncated files
    raise DataError(f"cannot decode image {name}: {e}") from e


def _open_image(data: bytes, name: str):
  from PIL import Image, UnidentifiedImageError
  try:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise DataError(f"cannot decode image {name}: {e}") from e


def _list_folder(root: pathlib.Path, split: str) -> list[tuple[str, str]]:
  """[(class_name, file_path)] of a tree root/split/class/file, in sorted order."""
  split_dir = root / split
  if not split_dir.is_dir():
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    raise DataError(f"split folder {split_dir} not found (splits present: {found}).")
  entries = []
  for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
    files = sorted(f for f in class_dir.iterdir() if f.is_file() and not f.name.startswith("."))
    if not files:
      raise DataError(f"class folder {class_dir} is empty.")
    entries += [(class_dir.name, str(f)) for f in files]
  return entries


def _list_tar(tar: tarfile.TarFile, path: str, split: str) -> list[tuple[str, tarfile.TarInfo]]:
  """Like _list_folder for a tar archive; the tree may sit under one top folder."""
  members = {}
  dirs = set()
  for m in tar.getmembers():
    parts = pathlib.PurePosixPath(m.name).parts
    if split in parts:
      i = parts.index(split)
      if m.isfile() and len(parts) == i + 3 and not parts[-1].startswith("."):
        members.setdefault(parts[i + 1], []).append(m)
      elif m.isdir() and len(parts) == i + 2:
        dirs.add(parts[i + 1])
  if not members and not dirs:
    raise DataError(f"split '{split}' not found in archive {path}.")
  for d in sorted(dirs - set(members)):
    raise DataError(f"class folder {split}/{d} in archive {path} is empty.")
  return [(c, m) for c in sorted(members) for m in sorted(members[c], key=lambda m: m.name)]


def _decode_folder(path: str, split: str, size: int, skip_corrupt: bool,
                   log=print) -> tuple[Split, int]:
  """Decodes a folder tree or .tar.gz split; returns (split, number of skipped files)."""
  images, labels, skipped = [], [], 0
  if os.path.isdir(path):
    entries = _list_folder(pathlib.Path(path), split)
    read = lambda e: pathlib.Path(e).read_bytes()
    name = lambda e: e
    tar = None
  elif os.path.isfile(path) and tarfile.is_tarfile(path):
    tar = tarfile.open(path, "r:*")
    entries = _list_tar(tar, path, split)
    read = lambda m: tar.extractfile(m).read()
    name = lambda m: f"{path}:{m.name}"
  else:
    raise DataError(f"data path {path} is neither a folder nor a tar archive.")
  class_names = tuple(sorted({c for c, _ in entries}))
  if not entries:
    raise DataError(f"split '{split}' in {path} has no images.")
  label_of = {c: i for i, c in enumerate(class_names)}
  try:
    for n, (c, e) in enumerate(entries):
      try:
        images.append(_to_rgb_array(_open_image(read(e), name(e)), size, name(e)))
        labels.append(label_of[c])
      except DataError as err:
        if not skip_corrupt:
          raise DataError(f"{err} (set config.data.skip_corrupt=True to skip such files)") from None
        skipped += 1
        log(f"warning: skipping {err}")
      if n % 10000 == 9999:
        log(f"  decoded {n + 1}/{len(entries)} images of '{split}'")
  finally:
    if tar is not None:
      tar.close()
  if not images:
    raise DataError(f"split '{split}' in {path} has no readable images.")
  return Split(np.stack(images), np.asarray(labels, np.int32), class_names), skipped


def _decode_tfds(name: str, split: str, size: int, data_dir: Optional[str]) -> Split:
  """Decodes a TFDS split through tf.data into memory (TensorFlow imported here only)."""
  try:
    import tensorflow as tf
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
        f"config.data.source 'tfds:{name}' needs tensorflow and tensorflow-datasets "
        f"(pip install 'ssl_jax[tfds]'); a 'folder:' source needs neither.") from e
  tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerators JAX uses
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"config.data.source 'tfds:{name}': no TFDS dataset is named {name!r} "
                    f"(tfds.list_builders() lists them, e.g. cifar10, cifar100, stl10, "
                    f"imagenet2012).") from None
  builder.download_and_prepare()
  info = builder.info
  try:
    # Examples keep their stored order (no file shuffling): position = instance index.
    ds = builder.as_dataset(split=split, shuffle_files=False, as_supervised=True)
  except (KeyError, ValueError) as e:
    raise DataError(f"config.data.source 'tfds:{name}' has no split {split!r} "
                    f"(splits: {sorted(info.splits)}): {str(e).splitlines()[0]}") from None

  def prep(image, label):
    if tuple(image.shape[:2]) != (size, size):
      # As for folders: short side to `size`, then a centre crop.
      hw = tf.cast(tf.shape(image)[:2], tf.float32)
      new_hw = tf.cast(tf.math.ceil(hw * size / tf.reduce_min(hw)), tf.int32)
      image = tf.image.resize(image, new_hw, antialias=True)
      image = tf.image.resize_with_crop_or_pad(image, size, size)
    if image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), tf.cast(label, tf.int32)

  ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE).batch(1024).prefetch(2)
  images, labels = [], []
  for x, y in tfds.as_numpy(ds):
    images.append(x)
    labels.append(y)
  names = tuple(info.features["label"].names) if "label" in info.features else ()
  return Split(np.concatenate(images), np.concatenate(labels), names)


def _cache_path(cache_dir: str, source: str, split: str, size: int) -> Optional[pathlib.Path]:
  kind, path = parse_source(source)
  if kind != "folder" or not cache_dir:
    return None
  st = os.stat(path)
  key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{split}|{size}|v1"
  return pathlib.Path(os.path.expanduser(cache_dir)) / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".npz")


def load_split(data_cfg, split: str, log=print) -> tuple[Split, int]:
  """Decodes `split` of `data_cfg.source`; returns (split, count of skipped files).

  Folder sources are cached decoded in `data_cfg.cache_dir` (keyed by path,
  size, mtime, split and image size), so a second run starts in a second.
  """
  kind, arg = parse_source(data_cfg.source)
  size = int(data_cfg.image_size)
  if kind == "tfds":
    return _decode_tfds(arg, split, size, data_cfg.get("tfds_data_dir") or None), 0
  if not os.path.exists(arg):
    raise DataError(f"config.data.source: path {arg} does not exist.")
  cache = _cache_path(data_cfg.get("cache_dir", ""), data_cfg.source, split, size)
  if cache is not None and cache.exists():
    with np.load(cache) as f:
      return Split(f["images"], f["labels"], tuple(f["class_names"].tolist())), int(f["skipped"])
  log(f"decoding {split} split of {arg} (cached afterwards)")
  result, skipped = _decode_folder(arg, split, size, bool(data_cfg.get("skip_corrupt", False)), log)
  if cache is not None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, images=result.images, labels=result.labels,
             class_names=np.asarray(result.class_names), skipped=skipped)
    os.replace(tmp, cache)  # atomic: a crash never leaves a half-written cache
  return result, skipped


def subset(split: Split, fraction: float, seed: int) -> Split:
  """A fixed seeded subset of round(fraction * N) examples, kept in original order.

  The subset's example j is instance j (the bank has one row per kept image);
  `source_index` records where it came from in the full split.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"config.data.fraction must be in (0, 1], got {fraction}.")
  n = len(split)
  if fraction == 1.0:
    return dataclasses.replace(split, source_index=np.arange(n))
  k = max(1, int(round(fraction * n)))
  keep = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
  return Split(split.images[keep], split.labels[keep], split.class_names, keep)


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  """Full batches per epoch; the remainder of each permutation is dropped."""
  return num_examples // global_batch


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of epoch `epoch`: a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_batches(split: Split, *, global_batch: int, num_local_devices: int, seed: int,
                  epoch: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict]:
  """Yields the batches of one epoch from step `start_step` on.

  Each batch is {'image': uint8 [D, b, H, W, 3], 'index': int32 [D, b],
  'label': int32 [D, b]} with D local devices and b = global_batch /
  (process_count * D). Process p takes the p-th slice of every global batch.
  """
  perm = epoch_permutation(len(split), seed, epoch)
  local = global_batch // process_count
  for step in range(start_step, steps_per_epoch(len(split), global_batch)):
    ids = perm[step * global_batch:(step + 1) * global_batch]
    ids = np.sort(ids[process_index * local:(process_index + 1) * local])
    shape = (num_local_devices, local // num_local_devices)
    yield {"image": split.images[ids].reshape(shape + split.images.shape[1:]),
           "index": ids.astype(np.int32).reshape(shape),
           "label": split.labels[ids].reshape(shape)}


def eval_batches(split: Split, *, batch_size: int, num_local_devices: int) -> Iterator[dict]:
  """The whole split in index order, padded to full [D, b] batches.

  'mask' is 1 for real examples and 0 for padding (the last batch repeats
  example 0), so callers drop padded rows after the forward pass.
  """
  per_dev = max(1, batch_size // num_local_devices)
  step = per_dev * num_local_devices
  n = len(split)
  for start in range(0, n, step):
    ids = np.arange(start, start + step)
    mask = ids < n
    ids = np.where(mask, ids, 0)
    shape = (num_local_devices, per_dev)
    yield {"image": split.images[ids].reshape(shape + split.images.shape[1:]),
           "label": split.labels[ids].reshape(shape),
           "mask": mask.reshape(shape)}
