"""The command line every experiment's run module shares."""

from __future__ import annotations

import sys
from typing import Callable, Optional

from experiments.sweep.runs import run_sweep


def main(module: str, report: Callable, variants: Optional[Callable] = None,
         after: Optional[Callable] = None) -> None:
  """The command line of an experiment: `python -m <module> --config ... --workdir ...`.

  Flags are defined here, not at import, so that tests can import every
  experiment's run module into one process.
  `variants(config)`, when given, builds config.variants from the
  experiment's axes (so `--config.fractions=...` changes them);
  `after(config, workdir, results)`, when given, is a step over the finished
  runs before the report (evaluating each on other data) and returns results;
  `report(config, results, command)` writes the results and returns Markdown.
  """
  from absl import app, flags, logging
  from ml_collections import config_flags
  from ssl_jax import cli
  folder = module.rsplit(".", 1)[0].replace(".", "/")
  config_flags.DEFINE_config_file("config", None, f"{folder}/config.py:<preset>")
  workdir = flags.DEFINE_string("workdir", None, "Folder for the runs of every variant.")
  debug = flags.DEFINE_bool("debug", False, "Show full tracebacks instead of one-line errors.")
  flags.mark_flags_as_required(["config", "workdir"])

  def run(argv) -> None:
    cli.no_positional_arguments(argv)
    logging.set_verbosity(logging.WARNING)
    config = flags.FLAGS.config
    if variants is not None:
      with config.unlocked():
        config.variants = variants(config)
    # SweepError is a ValueError: like every user error, one `error:` line.
    results = cli.run_guarded(lambda: run_sweep(config, workdir.value), debug.value)
    if after is not None:
      results = cli.run_guarded(lambda: after(config, workdir.value, results), debug.value)
    print(report(config, results, f"python -m {module} " + " ".join(sys.argv[1:])))

  app.run(run, flags_parser=cli.parse_flags)
