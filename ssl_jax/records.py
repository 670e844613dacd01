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

  def labels(self, positions: np.ndarray, log=print) -> np.ndarray:
    del log  # the labels come from the folder names: nothing to read
    return self._labels[positions]


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

  def labels(self, positions: np.ndarray, log=print) -> np.ndarray:
    """Labels of the given records (one read of each record: an ImageNet-sized split
    takes a while, so this is logged)."""
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
