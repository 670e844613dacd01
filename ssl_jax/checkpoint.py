"""Orbax checkpoints of the whole TrainState in `<workdir>/checkpoints`.

Orbax writes each step to a temporary folder and renames it when complete
(on a disk), or straight into the step's folder with a commit marker written
last (on an object store such as gs://, which has no rename): either way an
interrupted save is never listed as a checkpoint and never replaces the
previous one. Only replica 0's state is saved (replicas are identical by
construction); on restore it is replicated again. A latest checkpoint that
cannot be read is reported and the one before it is used; if none can be read
the run stops rather than silently starting from scratch.
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


def create_manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  # With several processes saves are synchronous: an asynchronous save's
  # background thread joins cross-process barriers that can interleave with
  # the next train steps' collectives differently in each process (a deadlock
  # seen with 2 processes on gloo). One process keeps async saves.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True,
      enable_async_checkpointing=jax.process_count() == 1)
  # The handler named up front, so a fresh manager can read a checkpoint's
  # metadata (the tree `restore_latest` compares) before anything is restored.
  return ocp.CheckpointManager(storage.absolute(storage.join(workdir, "checkpoints")),
                               options=options, item_handlers=ocp.StandardCheckpointHandler())


def save(manager: ocp.CheckpointManager, state: TrainState, *, wait: bool = False) -> int:
  """Saves an unreplicated state at its step (asynchronously unless `wait`); returns the step."""
  # Host (NumPy) copies: with several processes, orbax writes such leaves once,
  # from process 0, and every process must call save for its barriers.
  state = jax.device_get(state)
  step = int(state.step)
  manager.save(step, args=ocp.args.StandardSave(state), force=True)
  if wait:
    manager.wait_until_finished()
  return step


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


def structure_difference(saved: dict, expected: dict) -> Optional[str]:
  """What differs between two `leaf_specs`, in a few words, or None if they agree."""
  missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
  changed = [k for k in sorted(set(saved) & set(expected)) if saved[k] != expected[k]]
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


def _first_line(e: Exception) -> str:
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
                   log: Callable[[str], None] = print) -> Optional[TrainState]:
  """The newest readable checkpoint, restored into the structure of `template`.

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
  # NumPy targets: every process restores the whole (small) state on the host.
  abstract = jax.tree_util.tree_map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype),
                                    jax.device_get(template))
  expected = leaf_specs(abstract)
  errors = []
  for step in steps:
    try:
      metadata = manager.item_metadata(step)
      saved = (expected if metadata is None   # no metadata to compare: restoring tells
               else leaf_specs(metadata.tree, is_leaf=lambda x: hasattr(x, "shape")))
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
      saved, reason = None, _first_line(e)
    if saved is not None:
      if (difference := structure_difference(saved, expected)) is not None:
        raise CheckpointError(
            f"checkpoint at step {step} in {manager.directory} holds another state than this "
            f"code and config make ({difference}); was it written by another version or "
            f"config? Use that version or config, or another --workdir.")
      try:
        state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # the metadata read, the data did not
        state, reason = None, _first_line(e)
    if saved is None or state is None:
      errors.append(f"step {step}: {reason}")
      dst = _set_aside(manager, step)
      log(f"warning: checkpoint at step {step} is unreadable ({reason}); moved to {dst}, "
          f"trying an older one")
      continue
    if int(state.step) != step:
      errors.append(f"step {step}: holds step {int(state.step)}")
      continue
    return state
  raise CheckpointError(
      f"no usable checkpoint in {manager.directory} ({'; '.join(errors)}). Move the workdir "
      f"away to start from scratch.")
