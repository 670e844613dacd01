"""Orbax checkpoints of the whole TrainState in `<workdir>/checkpoints`.

Orbax writes each step to a temporary folder and renames it when complete
(with a commit marker), so an interrupted save never replaces the previous
checkpoint. Only replica 0's state is saved (replicas are identical by
construction); on restore it is replicated again. A latest checkpoint that
cannot be read is reported and the one before it is used; if none can be read
the run stops rather than silently starting from scratch.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

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
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=options)


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


def restore_latest(manager: ocp.CheckpointManager, template: TrainState,
                   log: Callable[[str], None] = print) -> Optional[TrainState]:
  """The newest readable checkpoint, restored into the structure of `template`.

  Returns None when the workdir has no checkpoint. Raises CheckpointError when
  it has some but none can be restored.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  # NumPy targets: every process restores the whole (small) state on the host.
  abstract = jax.tree_util.tree_map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype),
                                    jax.device_get(template))
  errors = []
  for step in steps:
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
      reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
      errors.append(f"step {step}: {reason}")
      # Moved out of orbax's view, so it is not retried and does not block
      # saving that step again; kept beside the others for inspection.
      src = os.path.join(str(manager.directory), str(step))
      dst = os.path.join(str(manager.directory), f"unreadable-{step}-{int(time.time())}")
      os.rename(src, dst)
      manager.reload()
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
