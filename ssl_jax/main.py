"""Command line: `python -m ssl_jax.main --config configs/cifar10.py --workdir runs/c10`.

Config fields are overridden with `--config.field=value`. Errors print one
line and exit non-zero; `--debug` shows the traceback.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and summary.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks instead of one-line errors.")
config_flags.DEFINE_config_file("config", None, "Path to an ml-collections config file.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from ssl_jax import train  # imported after flag parsing: keeps `--help` fast
  try:
    train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)
  except (ValueError, FileNotFoundError, FloatingPointError, ImportError) as e:
    if _DEBUG.value:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
