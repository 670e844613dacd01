"""Evaluating a trained encoder on another labelled dataset (`--train_data`, `--test_data`).

    python -m ssl_jax.evaluate --workdir W --train_data folder:/data/pets/train \
        --test_data folder:/data/pets/test

A source is one labelled split:

  folder:PATH        PATH/<class>/<image>: a folder of class folders, local or
                     gs://, or a tar archive holding one top folder of them
  tfds:NAME[:SPLIT]  a TFDS dataset's split (default: train for --train_data,
                     test for --test_data)

Both are decoded into memory at the run's image size (its evaluation
preprocessing), each process its own rows, and fit and test as the run's own
data would be (`builders.run_evaluation`, with the run's `config.eval`). The
test split's classes are matched to the training split's by name; a test
class the training split lacks is an error.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import jax
import numpy as np

from ssl_jax import data as data_lib
from ssl_jax import sources
from ssl_jax import storage
from ssl_jax.sources import DataError


def parse(spec: str, default_split: str) -> tuple[str, str]:
  """(data.source, split) of a `folder:` or `tfds:` evaluation source; DataError, one line."""
  kind, _, arg = spec.partition(":")
  if kind == "tfds" and arg:
    name, _, split = arg.partition(":")
    return f"tfds:{name}", split or default_split
  if kind != "folder" or not arg:
    raise DataError(f"an evaluation source is 'folder:PATH' or 'tfds:NAME[:SPLIT]', got {spec!r}.")
  path = os.path.expanduser(arg).rstrip("/")
  p = storage.path(path)
  if p.is_dir():
    if not any(c.is_dir() for c in p.iterdir()):
      raise DataError(f"{spec}: {path} has no class folders (it should hold "
                      f"{path}/<class>/<image>).")
    return f"folder:{os.path.dirname(path)}", os.path.basename(path)
  if p.is_file() and sources._is_tar(p):
    return f"folder:{path}", _top_folder(path, spec)
  raise DataError(f"{spec}: no folder or tar archive at {path}.")


def _top_folder(path: str, spec: str) -> str:
  """The one top folder of an archive of class folders (archive/<top>/<class>/<image>)."""
  with sources.open_tar(path) as tar:
    tops = {pathlib.PurePosixPath(m.name).parts[0] for m in tar.getmembers()
            if len(pathlib.PurePosixPath(m.name).parts) >= 3 and m.isfile()}
  if len(tops) != 1:
    raise DataError(f"{spec}: the archive should hold one top folder of class folders "
                    f"(<top>/<class>/<image>); it holds {sorted(tops) or 'none'}.")
  return tops.pop()


def load(config, spec: str, default_split: str, num_shards: int, log=print) -> data_lib.Split:
  """This process's rows of the split `spec` names, decoded at the run's image size."""
  source, split = parse(spec, default_split)
  data_cfg = config.data.copy_and_resolve_references()
  with data_cfg.unlocked():
    data_cfg.source, data_cfg.stream = source, False
  out, _ = data_lib.load_shard(data_cfg, split, fraction=1.0, seed=0, num_shards=num_shards,
                               process_index=jax.process_index(),
                               process_count=jax.process_count(), log=log)
  return out


def match_classes(train: data_lib.Split, test: data_lib.Split, train_spec: str,
                  test_spec: str) -> data_lib.Split:
  """`test` with its labels renumbered to the training split's classes, by name."""
  if not train.class_names or not test.class_names:
    return test  # unnamed classes (a TFDS label without names): the numbers are the classes
  index = {name: i for i, name in enumerate(train.class_names)}
  unseen = sorted(set(test.class_names) - set(index))
  if unseen:
    raise DataError(f"the test classes {unseen} of {test_spec} are not among the training "
                    f"classes of {train_spec} ({len(index)}: {list(index)[:5]}...).")
  renumber = np.asarray([index[name] for name in test.class_names], np.int32)
  return dataclasses.replace(test, labels=renumber[test.labels],
                             class_names=train.class_names)


def result_key(train_spec: str, test_spec: str) -> str:
  """The key of eval.json's `datasets` under which this evaluation is written."""
  return f"{train_spec} -> {test_spec}"
