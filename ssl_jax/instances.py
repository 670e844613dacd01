"""Which image each training instance is: its name, label and where to read it again.

Instance j of a run (row j of its memory bank) is the j-th image of the
seeded `config.data.fraction` of the training split (`data.subset_positions`
over the split's files in sorted (class, name) order, or its TFDS records in
stored order). Naming them needs the file list, not the images: a folder
split is listed, a TFDS split's size is read from its metadata. Only a run
that skipped undecodable files (`data.skip_corrupt` without streaming, which
drops them before numbering) needs every file opened again, to number the
rest as training did.
"""

from __future__ import annotations

import numpy as np

from ssl_jax import data as data_lib
from ssl_jax import reporting
from ssl_jax import sources
from ssl_jax import storage
from ssl_jax.sources import DataError


def _undecodable(path: str, names: list[str], log) -> set[str]:
  """The names (of `sources.split_files`) under `path` that do not decode."""
  root = storage.path(path)
  tar = None if root.is_dir() else sources.open_tar(path)
  bar = reporting.Progress(len(names), "checking which files training skipped", 1, delay=2.0)
  bad = set()
  try:
    members = {m.name: m for m in tar.getmembers()} if tar is not None else {}
    for i, name in enumerate(names, 1):
      data = (tar.extractfile(members[name]).read() if tar is not None
              else storage.read_bytes(storage.join(path, name)))
      try:
        sources.open_image(data, name)
      except DataError as e:
        bad.add(name)
        log(f"note: {e} (skipped in training too)")
      bar.update(i)
  finally:
    if tar is not None:
      tar.close()
  return bad


def _tfds_size(name: str, split: str, data_dir: str) -> int:
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"naming the instances of tfds:{name} needs tensorflow-datasets "
                      f"(pip install 'ssl_jax[tfds]').") from e
  info = tfds.builder(name, data_dir=data_dir or None).info
  if split not in info.splits:
    raise DataError(f"tfds:{name} has no split {split!r} (splits: {sorted(info.splits)}).")
  return int(info.splits[split].num_examples)


def training_instances(config, num_examples: int, log=print) -> dict:
  """Each training instance of the run `config` describes, in instance order.

  Returns {'paths': str [N] (a file's name relative to `root`, or a TFDS
  record's position in its split), 'root', 'source' (what
  `ssl_jax.embed.open_images` opens to read them again: `folder:<root>` or
  `tfds:<name>:<split>`), 'skipped': str [S] (files training left out)} plus,
  for folders, 'labels' int32 [N] and 'class_names' (the class folders):
  the fields of `python -m ssl_jax.embed`'s output that name its rows.

  Raises DataError when the split no longer has `num_examples` instances (the
  data changed since the run trained).
  """
  kind, arg = data_lib.parse_source(config.data.source)
  split = config.data.train_split
  fraction, seed = float(config.data.fraction), int(config.data.subset_seed)
  out = {"skipped": np.asarray([], dtype=str)}
  if kind == "tfds":
    total = _tfds_size(arg, split, config.data.get("tfds_data_dir", ""))
    positions = data_lib.subset_positions(total, fraction, seed)
    out.update(paths=np.asarray([str(p) for p in positions]),
               root=np.asarray(f"tfds:{arg}:{split}"), source=np.asarray(f"tfds:{arg}:{split}"))
  else:
    files = sources.split_files(arg, split)
    class_names = tuple(sorted({c for c, _ in files}))
    if config.data.get("skip_corrupt", False) and not config.data.get("stream", False):
      bad = _undecodable(arg, [n for _, n in files], log)
      out["skipped"] = np.asarray(sorted(bad), dtype=str)
      files = [(c, n) for c, n in files if n not in bad]
    positions = data_lib.subset_positions(len(files), fraction, seed)
    label_of = {c: i for i, c in enumerate(class_names)}
    out.update(paths=np.asarray([files[p][1] for p in positions]),
               labels=np.asarray([label_of[files[p][0]] for p in positions], np.int32),
               class_names=np.asarray(class_names), root=np.asarray(arg),
               source=np.asarray(f"folder:{arg}"))
  if len(positions) != num_examples:
    raise DataError(
        f"{config.data.source} split '{split}' now gives {len(positions)} training instances "
        f"(fraction {fraction:g}), but the run trained on {num_examples}: the data changed "
        f"since, so its rows cannot be named.")
  return out
