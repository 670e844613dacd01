"""Orbax checkpoints of the whole TrainState in `<workdir>/checkpoints`.

Orbax writes each step to a temporary folder and renames it when complete, so
an interrupted save never replaces the previous checkpoint. Only the state of
replica 0 is saved (replicas are identical by construction); on restore it is
replicated again.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import orbax.checkpoint as ocp

from ssl_jax.state import TrainState


def create_manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=options)


def save(manager: ocp.CheckpointManager, state: TrainState, *, wait: bool = False) -> int:
  """Saves an unreplicated state at its step; returns the step."""
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.StandardSave(state), force=True)
  if wait:
    manager.wait_until_finished()
  return step


def restore_latest(manager: ocp.CheckpointManager, template: TrainState) -> Optional[TrainState]:
  """The latest checkpoint restored into the structure of `template`, or None."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))
