"""Random-access record sources for the streaming input: encoded images by instance position.

  folder:<dir>  an image-folder tree `<split>/<class>/<image>`; record i is the
                i-th file in sorted (class, name) order, as the in-memory path
                numbers them. Read with the standard library; no TensorFlow.
  tfds:<name>   a TFDS dataset prepared in ArrayRecord format, opened with
                `tfds.data_source` over the *full* split (a sub-split would
                number its records from 0 again), images left encoded
                (`SkipDecoding`). Reading ArrayRecord needs no TensorFlow.

A source is picklable and opens its files lazily, so Grain's worker processes
each get their own handles. Every error here is one line, raised before
anything compiles.
"""

from __future__ import annotations

import io
import os
from typing import Optional

import numpy as np

from ssl_jax import sources
from ssl_jax import storage
from ssl_jax.sources import DataError


class FolderRecords:
  """The files of one split of an image-folder tree."""

  def __init__(self, root: str, split: str):
    if storage.path(root).is_file():
      raise DataError(
          f"config.data.stream=True reads a folder of image files, and {root} is a file; "
          f"extract it first (e.g. `tar xzf {root} -C DIR`, then data.source=folder:DIR/...) "
          f"or set config.data.stream=False.")
    if not storage.path(root).is_dir():
      raise DataError(f"config.data.source: path {root} does not exist.")
    entries = sources._list_folder(storage.path(root), split)  # one-line DataErrors
    self.class_names = tuple(sorted({c for c, _ in entries}))
    label_of = {c: i for i, c in enumerate(self.class_names)}
    self.paths = [p for _, p in entries]
    self._labels = np.asarray([label_of[c] for c, _ in entries], np.int32)
    self.description = f"folder {root}, split '{split}'"

  def __len__(self) -> int:
    return len(self.paths)

  def read(self, i: int) -> bytes:
    return storage.read_bytes(self.paths[i])

  def name(self, i: int) -> str:
    return self.paths[i]

  def labels(self, positions: np.ndarray, log=print, cache_dir: str = "") -> np.ndarray:
    del log, cache_dir  # the labels come from the folder names: nothing to read
    return self._labels[positions]


# A label cache's entry for a record not read yet (not -1: STL-10's unlabelled
# split labels every record -1).
UNREAD = np.iinfo(np.int32).min


class TfdsRecords:
  """One split of a TFDS dataset in ArrayRecord format, records read by position."""

  def __init__(self, name: str, split: str, data_dir: Optional[str]):
    self.dataset, self.split, self.data_dir = name, split, data_dir
    self.description = f"tfds:{name}, split '{split}'"
    source = self._source = self._open()
    self._len = len(source)
    info = getattr(source, "dataset_info", None)
    label = info.features["label"] if info is not None and "label" in info.features else None
    self.class_names = tuple(getattr(label, "names", ()) or ())

  def _open(self):
    tfds = _import_tfds(self.dataset)
    check_tfds_data_dir(self.data_dir)
    data_dir = os.fspath(storage.path(self.data_dir)) if self.data_dir else None
    try:
      return tfds.data_source(self.dataset, split=self.split, data_dir=data_dir, download=False,
                              decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as e:  # why it failed, in one line, from the builder's metadata
      failure = e
    try:
      builder = tfds.builder(self.dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise DataError(f"config.data.source 'tfds:{self.dataset}': no TFDS dataset is named "
                      f"{self.dataset!r} (e.g. cifar10, imagenet2012).") from None
    if not builder.is_prepared():
      raise DataError(
          f"tfds:{self.dataset} is not prepared in {builder.data_dir}; build it once with "
          f"`tfds build {self.dataset} --file_format=array_record"
          + (f" --data_dir={self.data_dir}" if self.data_dir else "") + "`.")
    splits = builder.info.splits
    if self.split not in splits:
      raise DataError(f"tfds:{self.dataset} has no split {self.split!r} "
                      f"(splits: {sorted(splits)}).")
    file_format = str(getattr(builder.info, "file_format", "") or "")
    if "array_record" not in file_format.lower():
      raise DataError(
          f"tfds:{self.dataset} in {builder.data_dir} is stored as {file_format or 'TFRecord'}, "
          f"and streaming reads ArrayRecord: convert it once with `tfds convert_format "
          f"--root_data_dir={os.path.dirname(os.path.dirname(builder.data_dir))} "
          f"--out_file_format=array_record`, or set config.data.stream=False.")
    raise DataError(f"cannot open {self.description} for streaming: "
                    f"{str(failure).splitlines()[0] if str(failure) else type(failure).__name__}")

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("_source", None)  # each worker opens its own file handles
    return state

  @property
  def source(self):
    if "_source" not in self.__dict__:
      self._source = self._open()
    return self._source

  def __len__(self) -> int:
    return self._len

  def read(self, i: int) -> bytes:
    return self.source[int(i)]["image"]

  def name(self, i: int) -> str:
    return f"tfds:{self.dataset} split '{self.split}' record {int(i)}"

  def labels(self, positions: np.ndarray, log=print, cache_dir: str = "") -> np.ndarray:
    """Labels of the given records, from the label cache where it has them.

    A record holds its label beside its image, so a label costs a read of
    the record: ImageNet's labels are all of its 140 GB. They are read once
    and cached as one int32 array over the full split (UNREAD where not
    read yet), beside the data when that folder is writable, else under
    `cache_dir` (the run's workdir); the log says which.
    """
    cached, where = self._cached_labels(cache_dir)
    labels = cached if cached is not None else np.full(self._len, UNREAD, np.int32)
    missing = np.unique(positions[labels[positions] == UNREAD])
    if not len(missing):
      log(f"labels of {self.description}: from the label cache {where}")
      return labels[positions]
    labels[missing] = self._read_labels(missing, log)
    written = self._write_labels(labels, cache_dir)
    log(f"labels of {self.description}: read from {len(missing)} records; "
        + (f"cached in {written}" if written else "not cached (no writable folder)"))
    return labels[positions]

  def _label_cache_places(self, cache_dir: str) -> list[tuple[str, bool]]:
    """(path, whether its folder may be created) where the label cache may be: beside
    the data (the dataset's version folder, so its name and version are the
    key; only a prepared one, and never created: TFDS takes a folder without
    its dataset_info.json for a broken dataset), then under `cache_dir`."""
    info = getattr(self.source, "dataset_info", None)
    places = []
    data_dir = os.fspath(getattr(info, "data_dir", "") or "")
    if data_dir and storage.exists(storage.join(data_dir, "dataset_info.json")):
      places.append((storage.join(data_dir, f"ssl_jax-labels-{self.split}.npy"), False))
    if cache_dir:
      version = getattr(info, "version", "unknown")
      places.append((storage.join(cache_dir, "label_cache",
                                  f"{self.dataset}-{version}-{self.split}.npy"), True))
    return places

  def _cached_labels(self, cache_dir: str) -> tuple[Optional[np.ndarray], str]:
    """(the first readable cache of this split's size, its path), or (None, "")."""
    for path, _ in self._label_cache_places(cache_dir):
      try:
        labels = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
      except Exception:  # noqa: BLE001  absent, unreadable or damaged: read the records
        continue
      if labels.shape == (self._len,) and labels.dtype == np.int32:
        return labels.copy(), path
    return None, ""

  def _write_labels(self, labels: np.ndarray, cache_dir: str) -> Optional[str]:
    """Writes the cache in the first place that takes it; its path, or None."""
    buffer = io.BytesIO()
    np.save(buffer, labels, allow_pickle=False)
    for path, create_folder in self._label_cache_places(cache_dir):
      try:
        if create_folder:
          storage.path(os.path.dirname(path)).mkdir(parents=True, exist_ok=True)
        storage.write_bytes_atomic(path, buffer.getvalue())
        return path
      except Exception:  # noqa: BLE001  read-only data, a bucket without write access
        continue
    return None

  def _read_labels(self, positions: np.ndarray, log=print) -> np.ndarray:
    """Labels of the given records, read from them (logged for an ImageNet-sized split)."""
    if len(positions) > 20000:
      log(f"reading the labels of {len(positions)} records of {self.description}")
    src, out = self.source, []
    for lo in range(0, len(positions), 4096):
      keys = [int(p) for p in positions[lo:lo + 4096]]
      try:  # ArrayRecord reads a list of records in one call
        out += [r["label"] for r in src.__getitems__(keys)]
      except (AttributeError, TypeError):  # sources without it (TFDS's mock data)
        out += [src[k]["label"] for k in keys]
    return np.asarray(out, np.int32)


def _import_tfds(name: str):
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"config.data.source 'tfds:{name}' needs tensorflow-datasets "
                      f"(pip install 'ssl_jax[tfds]'); a 'folder:' source does not.") from e
  return tfds


def check_tfds_data_dir(data_dir: Optional[str]) -> None:
  """DataError (one line) unless `data_dir` (local or gs://) is None or an existing folder."""
  if not data_dir:
    return
  try:
    found = storage.path(data_dir).is_dir()
  except Exception as e:  # noqa: BLE001  credentials, permissions, network
    raise DataError(f"config.data.tfds_data_dir {data_dir} cannot be read: {e}") from None
  if not found:
    raise DataError(f"config.data.tfds_data_dir {data_dir} does not exist.")


def open_records(source: str, split: str, tfds_data_dir: str = ""):
  """The record source of `split` of a `folder:` or `tfds:` data source."""
  kind, _, arg = source.partition(":")
  if kind == "folder":
    return FolderRecords(os.path.expanduser(arg), split)
  if kind == "tfds":
    return TfdsRecords(arg, split, tfds_data_dir or None)
  raise ValueError(f"config.data.source must be 'folder:<path>' or 'tfds:<name>', got {source!r}.")
