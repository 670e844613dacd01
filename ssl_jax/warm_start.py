"""`config.init_from`: a run's encoder starts from another run's trained encoder.

The backbone's parameters and BatchNorm statistics come from the source, a
training workdir (its latest checkpoint) or an export file, read as
`ssl_jax.load_encoder` reads them. The heads (projection, BYOL's predictor)
stay freshly initialised, and the method's own state (BYOL's target network)
is made again from the result, so any method can start from any other's
encoder. A bank method's bank is then initialised by the loaded encoder
(`config.bank.init`), and the run's "untrained" evaluation measures the loaded
encoder: the starting point.

Only a fresh start reads the source; a resumed run continues from its own
checkpoint.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from ssl_jax import checkpoint
from ssl_jax import encoder as encoder_lib
from ssl_jax import methods
from ssl_jax import storage
from ssl_jax.run_config import ConfigError
from ssl_jax.state import TrainState

BACKBONE = "backbone"  # the encoder's trunk in params and batch_stats; the rest are heads


def _describe(config) -> str:
  m = config.model
  return f"{m.name} (width {m.width:g}, {config.data.image_size} px)"


def check_source(config, workdir: str) -> None:
  """One line for an `init_from` that names nothing readable or the run's own workdir."""
  source = str(config.get("init_from", "") or "")
  if not source:
    return
  if os.path.abspath(source) == os.path.abspath(workdir) and "://" not in source:
    raise ConfigError(f"config.init_from={source} is this run's own workdir; a run resumes "
                      f"from its own checkpoints without it.")
  if not storage.exists(source):
    raise ConfigError(f"config.init_from={source}: no training workdir or export there.")


def warm_start(config, state: TrainState, log=print) -> TrainState:
  """`state` with its backbone from `config.init_from` (unchanged when that is empty).

  Raises ConfigError (one line) when the source cannot be read or its backbone
  differs from the one this run builds (another network, width or image size).
  """
  source = str(config.get("init_from", "") or "")
  if not source:
    return state
  try:
    loaded = encoder_lib.load_encoder(source)
  except (FileNotFoundError, encoder_lib.EncoderError, checkpoint.CheckpointError) as e:
    raise ConfigError(f"config.init_from={source}: {checkpoint.first_line(e)}") from None
  theirs = {k: loaded.variables.get(k, {}).get(BACKBONE, {}) for k in ("params", "batch_stats")}
  ours = {"params": state.params.get(BACKBONE, {}),
          "batch_stats": state.batch_stats.get(BACKBONE, {})}
  difference = checkpoint.structure_difference(checkpoint.leaf_specs(theirs),
                                               checkpoint.leaf_specs(ours))
  if difference is not None or not jax.tree_util.tree_leaves(theirs["params"]):
    raise ConfigError(
        f"config.init_from={source} holds a {_describe(loaded.config)} backbone; this run "
        f"builds a {_describe(config)} one ({difference or 'no backbone in the source'}).")
  graft = lambda tree, part: {**tree, BACKBONE: jax.tree_util.tree_map(jnp.asarray, part)}
  state = state.replace(params=graft(state.params, theirs["params"]),
                        batch_stats=graft(state.batch_stats, theirs["batch_stats"])
                        if theirs["batch_stats"] else state.batch_stats)
  state = state.replace(extra=methods.get(config.method).init_extra(state))
  log(f"encoder backbone from {source} (its step {loaded.step}, method "
      f"{loaded.config.method}); heads freshly initialised")
  return state
