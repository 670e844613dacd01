"""Orbax checkpoints of the whole TrainState in `<workdir>/checkpoints`.

Orbax writes each step to a temporary folder and renames it when complete
(on a disk), or straight into the step's folder with a commit marker written
last (on an object store such as gs://, which has no rename): either way an
interrupted save is never listed as a checkpoint and never replaces the
previous one. One replica's state is saved (replicas are identical by
construction): host NumPy leaves from a pmap run (`builders.host_state`),
or a mesh run's global arrays in their saved form (`mapping.to_saved`), a
sharded bank's rows written by the processes that hold them. Either restores
into either. A latest checkpoint that cannot be read is reported and the one
before it is used; if none can be read the run stops rather than silently
starting from scratch.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from ssl_jax import storage
from ssl_jax.state import TrainState


class CheckpointError(RuntimeError):
  """No usable checkpoint although the workdir has some."""


def create_manager(workdir: str, max_to_keep: int = 3, cleanup: bool = False,
                   asynchronous: bool = True) -> ocp.CheckpointManager:
  """The run's checkpoint manager. `cleanup`: remove what unfinished saves left (only
  for the run that holds the workdir: a reader could remove a live run's save).
  `asynchronous`: saves return once the state is copied off the devices, and
  are written in the background (`finish_saves` waits for them)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=cleanup,
      enable_async_checkpointing=asynchronous)
  # The handler named up front, so a fresh manager can read a checkpoint's
  # metadata (the tree `restore_latest` compares) before anything is restored.
  return ocp.CheckpointManager(storage.absolute(storage.join(workdir, "checkpoints")),
                               options=options, item_handlers=ocp.StandardCheckpointHandler())


def save(manager: ocp.CheckpointManager, state: TrainState, *, wait: bool = False) -> int:
  """Saves one replica's state at its step (asynchronously unless `wait`); returns the step.

  state: host NumPy leaves, or global jax.Arrays (each process writes the
  shards it holds; orbax writes a replicated leaf once). Every process calls
  it at the same step.

  A step is saved once: asking again for the latest step does nothing. A
  full disk raises `storage.DiskFull` after removing this save's partial files
  (at once with `wait`, or later from `finish_saves` for an asynchronous save).
  """
  if int(state.step) == manager.latest_step():   # None when there is no checkpoint
    return int(state.step)
  step = int(state.step)
  nbytes = sum(np.dtype(x.dtype).itemsize * int(np.prod(np.shape(x)))
               for x in jax.tree_util.tree_leaves(state))
  _in_flight[id(manager)] = (step, nbytes)
  try:
    manager.save(step, args=ocp.args.StandardSave(state), force=True)
  except Exception as e:  # noqa: BLE001  orbax wraps the OSError in several types
    _raise_if_disk_full(manager, e)
    raise
  if wait:
    finish_saves(manager)
  return step


# The step and size of each manager's latest save (an asynchronous one fails later).
_in_flight: dict[int, tuple[int, int]] = {}


def finish_saves(manager: ocp.CheckpointManager) -> None:
  """Waits for an asynchronous save; a full disk raises `storage.DiskFull` (one line)."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001
    _raise_if_disk_full(manager, e)
    raise


def _partial(directory: str, step: int) -> list:
  """The folders an unfinished save of `step` left: <step>.orbax-checkpoint-tmp-<n> on
  a disk; the step's folder without its commit marker on an object store."""
  return [entry for entry in storage.path(directory).iterdir()
          if entry.name.startswith(f"{step}.orbax-checkpoint-tmp") or (
              entry.name == str(step) and storage.is_remote(directory)
              and not (entry / "commit_success.txt").exists())]


def _remove_partial(directory: str, step: int, settle_seconds: float = 2.0) -> None:
  """Removes what a failed save of `step` left. Writes the save had already handed to
  tensorstore may still land (and recreate folders) after orbax reports the
  failure, so the folder is watched for `settle_seconds` and removed again."""
  deadline = time.monotonic() + settle_seconds
  while True:
    for entry in _partial(directory, step):
      try:
        storage.remove_tree(entry)
      except OSError:
        pass  # a late write raced the removal: the next pass gets it
    if time.monotonic() > deadline and not _partial(directory, step):
      return
    time.sleep(0.2)


def _raise_if_disk_full(manager: ocp.CheckpointManager, error: Exception) -> None:
  """Turns a failed save on a full disk into `storage.DiskFull`: removes the save's
  partial files (orbax's temporary folder; the older checkpoints stay), then says
  where, how much the checkpoint needs and what is kept."""
  if not storage.is_disk_full(error):
    return
  step, nbytes = _in_flight.pop(id(manager), (None, 0))
  directory = str(manager.directory)
  if step is not None and jax.process_index() == 0:
    _remove_partial(directory, step)
  manager.reload()
  kept = [s for s in manager.all_steps() if s != step]
  free = storage.free_bytes(directory)
  raise storage.DiskFull(
      f"no space left on device in {directory}: the checkpoint of step {step} needs about "
      f"{nbytes / 2**20:.1f} MiB"
      + (f" and {free / 2**20:.1f} MiB are free" if free is not None else "")
      + "; its partial files were removed. "
      + (f"The checkpoint of step {max(kept)} is kept: free some space and rerun the same "
         f"command to resume from it." if kept else
         "No earlier checkpoint exists: free some space and rerun.")) from None


def _key_name(key) -> str:
  for attr in ("name", "key", "idx"):   # GetAttrKey, DictKey, SequenceKey
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_specs(tree, is_leaf=None) -> dict[str, tuple]:
  """{'params/Conv_0/kernel': (shape, dtype name), ...} of every leaf of a pytree."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return {"/".join(_key_name(k) for k in path): (tuple(np.shape(x)), np.dtype(x.dtype).name)
          for path, x in flat}


def padded_rows(rows: int, num_examples: int) -> bool:
  """Whether a saved bank of `rows` rows is an N-row bank, or one in a sharded run's
  saved form: D blocks of ceil(N / D) rows for some device count D <= N (up
  to 65,536), which pads N with fewer than D zero rows. (A checkpoint of
  another dataset is refused before this, by run_info.json's N.)"""
  pad = rows - num_examples
  return pad == 0 or (pad > 0 and any(d * -(-num_examples // d) == rows
                                      for d in range(pad + 1, min(num_examples, 1 << 16) + 1)))


def _same_leaf(key: str, saved: tuple, expected: tuple) -> bool:
  if key == "bank" and len(saved[0]) == len(expected[0]) == 2:
    return (saved[0][1:], saved[1]) == (expected[0][1:], expected[1]) and padded_rows(
        saved[0][0], expected[0][0])
  return saved == expected


def structure_difference(saved: dict, expected: dict) -> Optional[str]:
  """What differs between two `leaf_specs`, in a few words, or None if they agree.

  A bank (leaf "bank") may hold zero padding rows past expected's N (the
  saved form of a sharded bank, `mapping.to_saved`)."""
  missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
  changed = [k for k in sorted(set(saved) & set(expected))
             if not _same_leaf(k, saved[k], expected[k])]
  if not (missing or extra or changed):
    return None
  show = lambda keys: ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
  parts = []
  if changed:
    k = changed[0]
    parts.append(f"{len(changed)} leaves of another shape or dtype ({k}: saved "
                 f"{saved[k][0]} {saved[k][1]}, expected {expected[k][0]} {expected[k][1]})")
  if missing:
    parts.append(f"missing {show(missing)}")
  if extra:
    parts.append(f"not expected {show(extra)}")
  return "; ".join(parts)


def first_line(e: BaseException) -> str:
  """An exception's first line (200 characters at most), or its type's name."""
  return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves an unreadable checkpoint out of orbax's view (process 0 only; others wait).

  Moved, not deleted: it is not retried, does not block saving that step
  again, and stays beside the others for inspection (on an object store the
  move is a copy, then a delete: `storage.move_folder`).
  """
  src = storage.join(str(manager.directory), str(step))
  dst = storage.join(str(manager.directory), f"unreadable-{step}-{int(time.time())}")
  if jax.process_index() == 0:
    storage.move_folder(src, dst)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"ssl_jax: set aside checkpoint {step}")
  manager.reload()
  return dst


def restore_latest(manager: ocp.CheckpointManager, template: TrainState,
                   log: Callable[[str], None] = print,
                   expected_shapes: Optional[TrainState] = None) -> Optional[TrainState]:
  """The newest readable checkpoint, restored into the structure of `template`.

  template: arrays or shapes (host NumPy results), or jax.ShapeDtypeStruct
  leaves with shardings (global arrays, each process reading its shards:
  `mapping.saved_template`). A bank is cut or zero-padded to the template's
  rows (another device count's saved form). expected_shapes: the true
  shapes to compare the checkpoint with, where the template's bank is padded.

  Returns None when the workdir has no checkpoint. A checkpoint whose files
  cannot be read (truncated, damaged) is reported, moved aside
  (`unreadable-<step>-<time>`) and the one before it tried. A checkpoint that
  reads but holds another structure (code or config changed what the state
  holds) raises CheckpointError naming what differs, and nothing is moved.
  Raises CheckpointError too when no checkpoint can be read.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  # NumPy targets (where the template has no shardings): every process
  # restores the whole state on the host. np.zeros maps untouched zero pages, so even an N x d bank target costs no memory
  # until orbax's result replaces it; `template` may be shapes only
  # (`builders.abstract_state`).
  def target(x):
    if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is not None:
      return x
    return np.zeros(np.shape(x), x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
  abstract = jax.tree_util.tree_map(target, template)
  expected = leaf_specs(expected_shapes if expected_shapes is not None else abstract)
  errors = []
  for step in steps:
    try:
      metadata = manager.item_metadata(step)
      saved = (expected if metadata is None   # no metadata to compare: restoring tells
               else leaf_specs(metadata.tree, is_leaf=lambda x: hasattr(x, "shape")))
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
      saved, reason = None, first_line(e)
    if saved is not None:
      if (difference := structure_difference(saved, expected)) is not None:
        raise CheckpointError(
            f"checkpoint at step {step} in {manager.directory} holds another state than this "
            f"code and config make ({difference}); was it written by another version or "
            f"config? Use that version or config, or another --workdir.")
      try:
        # strict=False: the bank's padding rows may differ (structure checked above).
        state = manager.restore(step, args=ocp.args.StandardRestore(abstract, strict=False))
      except Exception as e:  # the metadata read, the data did not
        state, reason = None, first_line(e)
    if saved is None or state is None:
      errors.append(f"step {step}: {reason}")
      dst = _set_aside(manager, step)
      log(f"warning: checkpoint at step {step} is unreadable ({reason}); moved to {dst}, "
          f"trying an older one")
      continue
    if isinstance(state.bank, np.ndarray) and len(state.bank) > len(abstract.bank):
      # Host targets are not cut by orbax: drop a sharded run's zero padding rows.
      state = state.replace(bank=state.bank[:len(abstract.bank)])
    if int(state.step) != step:
      errors.append(f"step {step}: holds step {int(state.step)}")
      continue
    return state
  raise CheckpointError(
      f"no usable checkpoint in {manager.directory} ({'; '.join(errors)}). Move the workdir "
      f"away to start from scratch.")
