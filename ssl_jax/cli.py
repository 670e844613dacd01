"""The command lines' shared shell: one-line errors, exit codes, and the evaluation command.

    python -m ssl_jax.main --config configs/quickstart.py --workdir runs/q   (ssl_jax/main.py)
    python -m ssl_jax.evaluate --workdir runs/q                               (`evaluate_command`)

Errors a user can fix print one line starting with `error:` and exit with
status 1 (`--debug` shows the traceback); a preempted run exits with 143.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

# What a user can fix from the message alone: bad configs and data
# (ValueError: ConfigError, DataError), missing files, a missing optional
# package, divergence, unusable checkpoints.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, ImportError)


def run_guarded(fn: Callable[[], object], debug: bool) -> object:
  """Runs `fn`, turning user errors into one line and the right exit status."""
  from ssl_jax import checkpoint, preemption
  try:
    return fn()
  except preemption.Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(preemption.EXIT_CODE)
  except USER_ERRORS + (checkpoint.CheckpointError,) as e:
    if debug:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def quiet_libraries(debug: bool) -> None:
  """Library INFO logs (orbax writes several lines per checkpoint) drown the
  progress bars; --debug brings them back."""
  from absl import logging
  logging.set_verbosity(logging.INFO if debug else logging.WARNING)


def evaluate_command() -> None:
  """`python -m ssl_jax.evaluate --workdir W`: kNN and linear top-1 of W's latest checkpoint.

  Prints the result as JSON and writes it to `<workdir>/eval.json`.
  """
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "Training run folder holding config.json and checkpoints/.")
  flags.DEFINE_bool("debug", False, "Show full tracebacks instead of one-line errors.")
  flags.mark_flag_as_required("workdir")

  def main(argv) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workdir, debug = flags.FLAGS.workdir, flags.FLAGS.debug
    quiet_libraries(debug)
    from ssl_jax import run_files, train  # the shell that rebuilds a run
    t0 = time.time()
    result = run_guarded(lambda: train.evaluate_checkpoint(workdir), debug)
    result["wall_seconds"] = time.time() - t0
    run_files.write_json_atomic(os.path.join(workdir, "eval.json"), result)
    print(json.dumps(result, indent=2))

  app.run(main)
