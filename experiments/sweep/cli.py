"""The command line every experiment's run module shares."""

from __future__ import annotations

import sys
from typing import Callable, Optional

from experiments.sweep.runs import run_sweep
from experiments.sweep.overrides import SweepError


def main(module: str, report: Callable, variants: Optional[Callable] = None) -> None:
  """The command line of an experiment: `python -m <module> --config ... --workdir ...`.

  Flags are defined here, not at import, so that tests can import every
  experiment's run module into one process.
  `variants(config)`, when given, builds config.variants from the
  experiment's axes (so `--config.fractions=...` changes them);
  `report(config, results, command)` writes the results and returns Markdown.
  """
  from absl import app, flags, logging
  from ml_collections import config_flags
  folder = module.rsplit(".", 1)[0].replace(".", "/")
  config_flags.DEFINE_config_file("config", None, f"{folder}/config.py:<preset>")
  workdir = flags.DEFINE_string("workdir", None, "Folder for the runs of every variant.")
  flags.mark_flags_as_required(["config", "workdir"])

  def run(argv) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    config = flags.FLAGS.config
    if variants is not None:
      with config.unlocked():
        config.variants = variants(config)
    try:
      results = run_sweep(config, workdir.value)
    except SweepError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    print(report(config, results, f"python -m {module} " + " ".join(sys.argv[1:])))

  app.run(run)
