"""The files a run keeps in its workdir beside the checkpoints.

  run_info.json     the config fields that fix a checkpoint's meaning (resume check)
  config.json       the whole config (`ssl_jax.evaluate` rebuilds the run from it)
  metrics.jsonl     one record per logged step and per epoch (cut back on resume)
  epoch_timing.json the seconds an epoch had run at each mid-epoch checkpoint, and the
                    metric sums of the logging window open there
  init_eval.json, summary.json   written whole, atomically
  lock.json         the run that holds the workdir (`ssl_jax.workdir_lock`)

Files written whole are never seen half-written: on a disk they go to a
temporary file that is then renamed, on an object store (`gs://`) they are
one object upload (`ssl_jax.storage`). metrics.jsonl is appended line by line
on a disk and rewritten whole at flush points on an object store
(`reporting.MetricWriter`); a line cut by a crash is dropped on resume.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import ml_collections
import numpy as np

from ssl_jax import storage
from ssl_jax.run_config import ConfigError, num_shards

# Fields that fix the shape or meaning of a checkpoint: a workdir's run can
# only be resumed by a config that agrees on all of them.
RESUME_FIELDS = ("method", "seed", "batch_size", "data.source", "data.train_split",
                 "data.fraction", "data.subset_seed", "data.image_size", "model.name",
                 "model.stem", "model.width", "model.embed_dim", "model.patch_size", "model.pool")
# Also the number of data shards (it fixes the data order), but as resolved:
# a 2-process run with shards=0 resumes in 1 process with shards=2.


def _field(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def prepare_workdir(workdir: str) -> None:
  """Creates `workdir` (and its parents); ConfigError in one line if it cannot be used."""
  if not workdir:
    raise ConfigError("--workdir is empty: give the folder for the run's files.")
  if storage.is_remote(workdir):  # no folders to create; check the bucket and credentials
    storage.check_writable_folder(workdir, "workdir")
    return
  try:
    os.makedirs(workdir, exist_ok=True)
  except FileExistsError:
    raise ConfigError(f"workdir {workdir} is a file, not a folder.") from None
  except OSError as e:
    raise ConfigError(f"workdir {workdir} cannot be created: {e.strerror} "
                      f"({e.filename or workdir}).") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(f"workdir {workdir} is not writable by this user.")


def remove_if_empty(workdir: str) -> None:
  """Removes a local workdir that holds nothing (a run that stopped before writing)."""
  try:
    os.rmdir(workdir)
  except OSError:
    pass  # not empty, or already gone: kept as it is


def check_resumable(workdir: str, config, num_train_examples: int, log=print) -> None:
  """Raises ConfigError if the run in `workdir` came from an incompatible config; logs a
  note when its last start streamed with another decoder than this machine's."""
  path = storage.join(workdir, "run_info.json")
  if not storage.exists(path):
    return
  info = storage.read_json(path)
  here = _decoder(config)
  if info.get("decoder") and here and info["decoder"] != here:
    log(f"note: this run last decoded its stream with {info['decoder']}, this machine with "
        f"{here}: the crops are the same, their pixels differ within the decoders' bound "
        f"(ssl_jax/decoders.py), so it will not end bit-identical to an uninterrupted run.")
  saved = info.get("config", {})
  for field in RESUME_FIELDS:
    here = _field(config, field)
    there = saved.get(field)
    if isinstance(here, tuple):
      here = list(here)
    if field in saved and there != here:
      raise ConfigError(
          f"{workdir} holds a run with config.{field}={there!r}, not {here!r}: resuming it "
          f"with this config is impossible. Use another --workdir or the run's config.")
  shards = num_shards(config)
  if info.get("data_shards", 1) != shards:
    raise ConfigError(
        f"{workdir} holds a run with {info.get('data_shards', 1)} data shard(s) (one per "
        f"process unless config.data.shards says otherwise), but this run has {shards}: the "
        f"data order would change. Rerun with --config.data.shards={info.get('data_shards', 1)}.")
  if info.get("num_train_examples") != num_train_examples:
    raise ConfigError(
        f"{workdir} holds a run over {info.get('num_train_examples')} training images, but "
        f"the dataset now has {num_train_examples}: the bank does not fit. Use another "
        f"--workdir.")




def truncate_metrics(workdir: str, step: int) -> list[dict]:
  """Drops metrics.jsonl records after `step` (work redone after a resume); returns the rest."""
  path = storage.join(workdir, "metrics.jsonl")
  if not storage.exists(path):
    return []
  records = []
  for line in storage.read_text(path).splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut by a crash
      continue
    if record.get("step", 0) <= step:
      records.append(record)
  storage.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
  return records


EPOCH_TIMING = "epoch_timing.json"


def _entry(workdir: str, step: int, steps_per_epoch: int) -> Optional[dict]:
  """epoch_timing.json's entry for a checkpoint at `step`, if it covers every step of
  its epoch so far (a run from before an entry existed, or an earlier resume whose own
  carry was missing, has none that does)."""
  path = storage.join(workdir, EPOCH_TIMING)
  if not storage.exists(path):
    return None
  entry = storage.read_json(path).get(str(step))
  if not entry or entry["steps"] != step % steps_per_epoch:
    return None
  return entry


def carried_epoch_time(workdir: str, step: int, steps_per_epoch: int) -> tuple[float, int]:
  """(seconds, steps) the epoch of `step` had trained before the checkpoint at `step`.

  A run stopped mid-epoch and resumed would otherwise time only the steps
  after the resume: its epoch record, and so the sweeps' training seconds,
  would leave out the work before the stop. (0, 0) at an epoch boundary
  (entries are only written mid-epoch) and when the entry for `step` is
  missing or does not cover every step of its epoch (`_entry`).
  """
  entry = _entry(workdir, step, steps_per_epoch)
  if entry is None:
    return 0.0, 0
  return float(entry["seconds"]), int(entry["steps"])


def carried_metric_sums(workdir: str, step: int, steps_per_epoch: int) -> Optional[dict]:
  """The metric sums of the logging window open at the checkpoint at `step`, as NumPy
  scalars of their own dtypes, or None (no window open, or no entry).

  A resumed run adds its steps to them, so the record that closes the window
  is the one an uninterrupted run writes, to the bit (float32 sums survive
  JSON exactly: each is a float64 that holds the float32 value).
  """
  entry = _entry(workdir, step, steps_per_epoch)
  if entry is None or not entry.get("metric_sums"):
    return None
  return {k: np.asarray(v, dtype=dtype) for k, (v, dtype) in entry["metric_sums"].items()}


def record_epoch_time(workdir: str, step: int, seconds: float, steps: int,
                      metric_sums: Optional[dict] = None) -> None:
  """Adds the epoch's (seconds, steps) so far at checkpoint `step` to epoch_timing.json,
  with the open logging window's sums ({name: [value, dtype name]}) if one is open.

  Written before the checkpoint's save starts, so that no committed mid-epoch
  checkpoint lacks its entry. The last few entries are kept, not just this
  one: a save that never completes leaves the run to resume from the one
  before (orbax has at most one save in flight).
  """
  path = storage.join(workdir, EPOCH_TIMING)
  entries = storage.read_json(path) if storage.exists(path) else {}
  entries[str(step)] = {"seconds": seconds, "steps": steps,
                        **({"metric_sums": metric_sums} if metric_sums else {})}
  storage.write_json_atomic(path, dict(sorted(entries.items(), key=lambda kv: int(kv[0]))[-4:]))


def _decoder(config) -> str:
  """'<decoder> <version>' of a streamed run here ('' for an in-memory run)."""
  if not config.data.get("stream", False):
    return ""
  from ssl_jax import decoders
  return decoders.version(config.data.get("decoder", "pillow"))


def write_run_info(workdir: str, config, num_train_examples: int) -> None:
  """run_info.json: what `check_resumable` compares a later run's config against, and the
  stream's decoder (a resume on a machine decoding otherwise says so)."""
  storage.write_json_atomic(storage.join(workdir, "run_info.json"), {
      "num_train_examples": num_train_examples, "embed_dim": int(config.model.embed_dim),
      "data_shards": num_shards(config), "decoder": _decoder(config),
      "config": {f: list(v) if isinstance(v := _field(config, f), tuple) else v
                 for f in RESUME_FIELDS}})


def write_config(workdir: str, config) -> None:
  """config.json: the run's whole config."""
  storage.write_text_atomic(storage.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  storage.check_reachable(workdir, "--workdir")
  path = storage.join(workdir, "config.json")
  if not storage.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
  return ml_collections.ConfigDict(storage.read_json(path))
