"""Decoding a source's images into arrays: image folders and archives with Pillow, TFDS.

  folder:<path>  an image-folder tree `<split>/<class>/<image>`, or a .tar.gz of
                 one. Read with Pillow and NumPy alone: no TensorFlow needed.
  tfds:<name>    any TFDS image classification dataset, decoded through
                 tf.data. TensorFlow is imported only here, only for it.

Every image comes out as uint8 [size, size, 3] (short side resized, centre
crop). `ssl_jax.data` turns what is decoded into splits, shards and batches.
"""

from __future__ import annotations

import io
import os
import pathlib
import tarfile
from typing import NamedTuple, Optional

import numpy as np

from ssl_jax import storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class DataError(ValueError):
  """Bad input data: names the file or folder at fault."""


class Decoded(NamedTuple):
  """A decoded split: images uint8 [n, S, S, 3], labels int32 [n], class names (or ())."""
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple


def as_pil(image):
  """A PIL image, or an array [H, W] / [H, W, 1|3|4] (uint8; uint16 and floats in
  [0, 1] or [0, 255] are scaled to uint8), as a PIL image."""
  from PIL import Image
  if isinstance(image, Image.Image):
    return image
  x = np.asarray(image)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] not in (3, 4)) or 0 in x.shape:
    raise ValueError(f"an image array is [H, W] or [H, W, 3 or 4], got shape {list(x.shape)}.")
  if x.dtype == np.uint16:
    x = x / 257.0
  elif x.dtype.kind == "f" and x.size and float(np.nanmax(x)) <= 1.0:
    x = x * 255.0
  if x.dtype != np.uint8:
    x = np.clip(np.round(np.nan_to_num(x)), 0, 255).astype(np.uint8)
  return Image.fromarray(x)


def _to_8_bit(img):
  """16-bit and 32-bit grayscale (PNG 'I;16', 'I', 'F') scaled to 8 bits, not clipped."""
  from PIL import Image
  if img.mode.startswith("I;16") or img.mode in ("I", "F"):
    x = np.asarray(img, np.float64)
    top = 1.0 if img.mode == "F" and x.max() <= 1.0 else (255.0 if x.max() <= 255 else 65535.0)
    return Image.fromarray(np.clip(np.round(x * 255.0 / top), 0, 255).astype(np.uint8))
  return img


def upright_rgb(img):
  """A PIL image in RGB: EXIF orientation applied, 16-bit and float grayscale scaled to
  8 bits, palettes with transparency through RGBA, alpha dropped."""
  from PIL import ImageOps
  img = _to_8_bit(ImageOps.exif_transpose(img))
  if img.mode == "P" and "transparency" in img.info:
    img = img.convert("RGBA")  # Pillow's advice for palettes with transparency
  return img.convert("RGB")


def to_rgb_array(img, size: int, name: str) -> np.ndarray:
  """PIL image (any mode, any size) -> uint8 [size, size, 3].

  The EXIF orientation is applied (a photo stored sideways comes out
  upright); grayscale, 16-bit, palette, CMYK and RGBA images are converted to
  RGB (alpha dropped). Non-square or other-sized images are resized so the
  short side is `size`, then centre-cropped: the usual evaluation
  transform, applied once at decode.
  """
  from PIL import Image  # Pillow is a core dependency; imported here to keep import light.
  try:
    img = upright_rgb(img)
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


def load_image(data: bytes, size: int, name: str) -> np.ndarray:
  """Encoded image bytes -> uint8 [size, size, 3]; DataError naming `name` if undecodable."""
  return to_rgb_array(open_image(data, name), size, name)


def open_image(data: bytes, name: str):
  from PIL import Image, UnidentifiedImageError
  try:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise DataError(f"cannot decode image {name}: {e}") from e


def _list_folder(root, split: str) -> list[tuple[str, str]]:
  """[(class_name, file_path)] of a tree root/split/class/file (`root` an epath Path), sorted."""
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


def _is_tar(p) -> bool:
  with p.open("rb") as f:
    return tarfile.is_tarfile(f)


def open_tar(path: str) -> tarfile.TarFile:
  """A local or gs:// tar archive (any compression), opened for reading."""
  if storage.is_remote(path):
    return tarfile.open(fileobj=storage.path(path).open("rb"), mode="r:*")
  return tarfile.open(path, "r:*")


def split_files(path: str, split: str) -> list[tuple[str, str]]:
  """[(class name, file name)] of a folder tree's or tar archive's split, in the order
  `decode_folder` numbers them; names are relative to `path` (a folder) or tar member
  names (an archive), as `ssl_jax.embed.open_images(f"folder:{path}")` reads them."""
  root = storage.path(path)
  if root.is_dir():
    prefix = str(root).rstrip("/") + "/"
    return [(c, e[len(prefix):] if e.startswith(prefix) else e)
            for c, e in _list_folder(root, split)]
  if root.is_file() and _is_tar(root):
    with open_tar(path) as tar:
      return [(c, m.name) for c, m in _list_tar(tar, path, split)]
  raise DataError(f"data path {path} is neither a folder nor a tar archive.")


def decode_folder(path: str, split: str, size: int, skip_corrupt: bool,
                   log=print, keep=None) -> tuple[Decoded, int]:
  """Decodes a folder tree or .tar.gz split; returns (decoded, number of skipped files).

  keep(n) -> sorted positions, given the number n of files in the split,
  restricts decoding to those files (None: all of them).
  """
  images, labels, skipped = [], [], 0
  root = storage.path(path)  # a local path or gs://...
  if root.is_dir():
    entries = _list_folder(root, split)
    read = storage.read_bytes
    name = lambda e: e
    tar = None
  elif root.is_file() and _is_tar(root):
    tar = open_tar(path)
    entries = _list_tar(tar, path, split)
    read = lambda m: tar.extractfile(m).read()
    name = lambda m: f"{path}:{m.name}"
  else:
    raise DataError(f"data path {path} is neither a folder nor a tar archive.")
  class_names = tuple(sorted({c for c, _ in entries}))
  if not entries:
    raise DataError(f"split '{split}' in {path} has no images.")
  label_of = {c: i for i, c in enumerate(class_names)}
  if keep is not None:
    entries = [entries[i] for i in keep(len(entries))]
  try:
    for n, (c, e) in enumerate(entries):
      try:
        images.append(load_image(read(e), size, name(e)))
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
  return Decoded(np.stack(images), np.asarray(labels, np.int32), class_names), skipped


def decode_tfds(name: str, split: str, size: int, data_dir: Optional[str],
                 keep=None) -> Decoded:
  """Decodes a TFDS split through tf.data into memory (TensorFlow imported here only).

  keep(n) -> sorted positions restricts it to those examples: only the
  contiguous range [first, last] they span is read (TFDS's split slicing,
  as `tfds.split_for_jax_process` does).
  """
  # TensorFlow's C++ INFO lines (oneDNN and the like) say nothing a user acts on.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
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
  from ssl_jax import downloads  # only where a TFDS dataset may need downloading
  downloads.prepare(builder, name)
  info = builder.info
  first, positions = 0, None
  if keep is not None:
    if split not in info.splits:
      raise DataError(f"config.data.source 'tfds:{name}' has no split {split!r} "
                      f"(splits: {sorted(info.splits)}).")
    positions = keep(info.splits[split].num_examples)
    first = int(positions[0])
    split = f"{split}[{first}:{int(positions[-1]) + 1}]"
  try:
    # Examples keep their stored order (no file shuffling): position = instance index.
    ds = builder.as_dataset(split=split, shuffle_files=False, as_supervised=True)
  except NotImplementedError:  # TFDS reads ArrayRecord files only as a data source
    raise DataError(f"tfds:{name} is stored in ArrayRecord format, which tf.data does not "
                    f"read: set config.data.stream=True to stream it.") from None
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
  images, labels = np.concatenate(images), np.concatenate(labels)
  if positions is not None:
    images, labels = images[positions - first], labels[positions - first]
  return Decoded(images, labels, names)
