"""Command line: `python -m ssl_jax.main --config configs/cifar10.py --workdir runs/c10`.

Config fields are overridden with `--config.field=value`. Errors print one
line and exit with status 1; `--debug` shows the traceback. SIGTERM writes a
checkpoint and exits with status 143 (128 + SIGTERM), Ctrl-C with 130; rerunning
the same command resumes. Several processes (TPU pod slices, GPU nodes, or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) join through
`ssl_jax.distributed` before training.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from ssl_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and summary.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks instead of one-line errors.")
config_flags.DEFINE_config_file("config", None, "Path to an ml-collections config file.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  cli.no_positional_arguments(argv)
  cli.quiet_libraries(_DEBUG.value)
  # Imported after flag parsing: keeps `--help` fast.
  from ssl_jax import distributed, preemption, train

  config = flags.FLAGS.config
  if cli.flag_value(sys.argv, "config.data.source") and "source_chosen" in config.data:
    config.data.source_reason = "given on the command line"
    config.data.source_chosen = config.data.source

  def run() -> None:
    joined = distributed.initialize()
    try:
      train.train_and_evaluate(config, _WORKDIR.value)
    except preemption.Preempted:
      # Every process stops after the same step (ssl_jax.loop.Loop.stop_agreed), so
      # all of them reach this barrier and leave the runtime together.
      if joined:
        distributed.finish()
      raise
    if joined:
      distributed.finish()
  cli.run_guarded(run, _DEBUG.value)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
