"""The command lines' shared shell: one-line errors, exit codes, and the evaluation command.

    python -m ssl_jax.main --config configs/quickstart.py --workdir runs/q   (ssl_jax/main.py)
    python -m ssl_jax.evaluate --workdir runs/q                               (`evaluate_command`)

Errors a user can fix print one line starting with `error:` and exit with
status 1 (`--debug` shows the traceback); a run stopped with a checkpoint exits
with 143 after SIGTERM and 130 after Ctrl-C; a full disk exits with 74.
That holds from the first flag on: `parse_flags` is every command line's
flag parser (`app.run(main, flags_parser=cli.parse_flags)`), so a mistyped
field, a missing config file or a bad value is one line too.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import warnings
from typing import Callable, NoReturn, Optional, Sequence

# What a user can fix from the message alone: bad configs and data
# (ValueError: ConfigError, DataError), missing files, a missing optional
# package, divergence, unusable checkpoints, a workdir another run holds.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, ImportError)


def fail(message: str) -> NoReturn:
  """Prints `error: <message>` (one line) and exits with status 1."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def debug_requested(argv: Sequence[str]) -> bool:
  """Whether the command line asks for tracebacks (read before flags are parsed)."""
  return any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with every error as one `error:` line and exit status 1.

  Covers what absl and ml_collections raise while parsing: an unknown flag
  or config field (with the nearest name), a value of the wrong type, a
  missing or broken config file, an unknown method or preset after `:`, a
  missing required flag. `--help` still prints the help.
  """
  from absl import flags
  config_flags = [name for name in flags.FLAGS
                  if type(flags.FLAGS[name]).__module__.startswith("ml_collections")]
  try:
    try:
      rest = flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError):
      raise  # a flag's value or an override's field: the message names it
    except Exception as e:  # noqa: BLE001  raised by a config file's own code
      given = [n for n in config_flags if flag_value(argv, n)]
      raise _ConfigFileError(given[0] if given else "config", e) from e
    for name in config_flags:
      # A config file that failed to load is an object raising on first
      # use: use it here, while errors are still flag errors.
      try:
        _ = getattr(flags.FLAGS[name].value, "keys", None)
      except Exception as e:  # noqa: BLE001
        raise _ConfigFileError(name, e.__cause__ or e) from e
    return rest
  except Exception as e:  # noqa: BLE001  every parse error becomes one line
    if debug_requested(argv):
      raise
    fail(flag_error_message(e, argv))


def no_positional_arguments(argv: Sequence[str]) -> None:
  """Every command line takes flags only: a stray word is one `error:` line."""
  if len(argv) > 1:
    fail(f"unexpected argument{'s' if len(argv) > 2 else ''} {' '.join(argv[1:])!r} "
         "(every option is a --flag; config fields are --config.<field>=<value>).")


class _ConfigFileError(Exception):
  """A config file that could not be loaded (missing, bad syntax, raising)."""

  def __init__(self, flag: str, cause: BaseException):
    super().__init__(flag, cause)
    self.flag, self.cause = flag, cause


def flag_value(argv: Sequence[str], name: str) -> str:
  """The text given to `--name` on the command line ('' if absent)."""
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
    if a == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return ""


def flag_error_message(error: BaseException, argv: Sequence[str]) -> str:
  """One line for a flag-parsing error, naming the flag it came from."""
  if isinstance(error, _ConfigFileError):
    given, cause = flag_value(argv, error.flag), error.cause
    if missing := re.search(r"No such file or directory: '([^']+)'", str(cause)):
      return f"--{error.flag}: no config file at {missing.group(1)!r}."
    if isinstance(cause, SyntaxError):
      return f"--{error.flag}={given}: {cause.msg} (line {cause.lineno})."
    return f"--{error.flag}={given}: {type(cause).__name__}: {cause}"
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if missing := re.search(r"Flag --(\w+) must have a value other than None", text):
    return f"--{missing.group(1)} is required."
  if "Traceback (most recent call last)" in text:
    # ml_collections puts the traceback of an error raised inside the config
    # file into the flag's message: its last line is the cause.
    flag = lines[0].split(": ", 1)[0].removeprefix("flag ")
    cause = re.sub(r"^[A-Za-z_][\w.]*(Error|Exception): ", "", lines[-1])
    return f"{flag}: {cause}"
  if isinstance(error, (AttributeError, KeyError)):
    return _unknown_field(text, argv)
  return re.sub(r"^flag ", "", lines[0] if lines else type(error).__name__) + (
      " " + " ".join(lines[1:2]) if len(lines) > 1 and "--help" not in lines[1] else "")


def _unknown_field(text: str, argv: Sequence[str]) -> str:
  """`--config.data.sorce=x: config.data has no field 'sorce' (did you mean 'source'?)`."""
  name = re.search(r"'([^'\\]+)", text)
  key = name.group(1) if name else "?"
  suggestion = re.search(r'Did you mean "([^"]+)"', text)
  flag = next((a for a in argv if a.startswith("--") and "." in a
               and key in a.split("=", 1)[0].lstrip("-").split(".")), None)
  where = "the config"
  if flag:
    path = flag.split("=", 1)[0].lstrip("-").split(".")
    where = ".".join(path[:path.index(key)])
  hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
  return f"{flag or '--config'}: {where} has no field {key!r}{hint}."


def check_writable(path: str) -> None:
  """Raises ValueError (one line) unless a file can be written at `path` (local or gs://)."""
  from ssl_jax import storage
  if storage.is_remote(path):
    storage.check_writable_folder(path.rsplit("/", 1)[0], "--out")
    return
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise ValueError(f"--out {path} is a folder; give a file name.")
  if not os.path.isdir(folder):
    raise ValueError(f"--out {path}: folder {folder} does not exist.")
  if not os.access(folder, os.W_OK):
    raise ValueError(f"--out {path}: folder {folder} is not writable.")


def run_guarded(fn: Callable[[], object], debug: bool) -> object:
  """Runs `fn`, turning user errors into one line and the right exit status:
  1 for what the message says to fix, 143 (SIGTERM) or 130 (Ctrl-C) for a run
  stopped with a checkpoint, 74 for a full disk."""
  from ssl_jax import checkpoint, preemption, storage, stream, workdir_lock
  try:
    return fn()
  except preemption.Preempted as e:
    print(f"{e.label}: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    # Ctrl-C outside the training loop (loading data, evaluating): nothing is
    # half-written that a rerun does not redo.
    if debug:
      raise
    print("interrupted: stopped by Ctrl-C. Rerun the same command to start again (a "
          "training run resumes from its last checkpoint).", file=sys.stderr)
    sys.exit(preemption.INTERRUPT_EXIT_CODE)
  except Exception as e:  # noqa: BLE001
    if debug:
      raise
    if storage.is_disk_full(e):  # first: orbax reports ENOSPC as a ValueError, too
      message = str(e) if isinstance(e, storage.DiskFull) else (
          f"no space left on device ({checkpoint.first_line(e)}): free some space and rerun "
          f"the same command to resume from the last checkpoint.")
      print(f"error: {message}", file=sys.stderr)
      sys.exit(storage.DISK_FULL_EXIT_CODE)
    if isinstance(e, USER_ERRORS + (checkpoint.CheckpointError, workdir_lock.WorkdirLocked,
                                    stream.WorkerDied)):
      fail(str(e))
    raise


class _OrbaxErrors:
  """A logging filter dropping orbax's own error logs (with tracebacks) of a failed save:
  the exception reaches `run_guarded`, which says it in one line. Also asyncio's
  "Task exception was never retrieved" for an orbax write task of that save
  (which of them is left unretrieved depends on timing)."""

  def filter(self, record) -> bool:
    if record.levelno < 40:
      return True
    if f"{os.sep}orbax{os.sep}" in record.pathname:
      return False
    return not (record.name == "asyncio" and "orbax" in record.getMessage())


def _unraisable(default):
  def hook(unraisable) -> None:
    # tensorstore's callbacks of a save that failed (a full disk) run after orbax
    # closed their event loop; there is nothing left to report.
    if "Event loop is closed" in str(unraisable.exc_value):
      return
    default(unraisable)
  return hook


def quiet_libraries(debug: bool) -> None:
  """Library INFO logs (orbax writes several lines per checkpoint) drown the
  progress bars, and orbax logs the traceback of a failed save that the run
  reports in one line; --debug brings them back."""
  import logging as std_logging
  from absl import logging
  logging.set_verbosity(logging.INFO if debug else logging.WARNING)
  if not debug:
    for name in ("absl", "asyncio"):  # a logger's filters see only its own records
      std_logging.getLogger(name).addFilter(_OrbaxErrors())
    sys.unraisablehook = _unraisable(sys.unraisablehook)
    # A save the disk cut short leaves orbax's write coroutines unawaited, and
    # Python warns about them at exit, after the run's one-line error.
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited",
                            category=RuntimeWarning)


def run_command(work: Callable[[], Optional[str]], required: Sequence[str]) -> None:
  """The shell of a command line whose flags are defined: `--debug`, the required
  flags, one-line errors for flags and for `work`'s user errors; prints what
  `work()` returns."""
  from absl import app, flags
  flags.DEFINE_bool("debug", False, "Show full tracebacks instead of one-line errors.")
  flags.mark_flags_as_required(list(required))

  def run(argv) -> None:
    no_positional_arguments(argv)
    quiet_libraries(flags.FLAGS.debug)
    message = run_guarded(work, flags.FLAGS.debug)
    if message:
      print(message)

  app.run(run, flags_parser=parse_flags)


def evaluation_sentence(result: dict, path: str) -> str:
  """What `python -m ssl_jax.evaluate`'s numbers are, in words."""
  pct = lambda x: f"{100 * x:.2f}%"
  when = f" (epoch {result['epoch']:.2f})" if "epoch" in result else ""
  where = (f"on {result['test_data']} (fit on {result['train_data']}); written to {path} "
           f"under datasets" if "test_data" in result else f"on the test split; written to {path}")
  return (f"checkpoint of step {result['step']}{when}: kNN top-1 "
          f"{pct(result['knn_top1'])} on backbone features ({pct(result['knn_top1_embedding'])} "
          f"on the projection), linear probe top-1 {pct(result['linear_top1'])}, {where}.")


def evaluate_command() -> None:
  """`python -m ssl_jax.evaluate --workdir W`: kNN and linear top-1 of W's latest checkpoint.

  Prints the result as JSON and writes it to `<workdir>/eval.json`. With
  `--train_data SRC --test_data SRC` the same on another labelled dataset,
  written under eval.json's `datasets`, keyed by the two sources.
  """
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "Training run folder holding config.json and checkpoints/.")
  flags.DEFINE_string("train_data", None, "Another labelled split to fit kNN and the probe on: "
                      "folder:PATH (PATH/<class>/<image>, or a tar of one such folder) or "
                      "tfds:NAME[:SPLIT]. Needs --test_data.")
  flags.DEFINE_string("test_data", None, "The labelled split to test on (as --train_data).")
  flags.DEFINE_bool("debug", False, "Show full tracebacks instead of one-line errors.")
  flags.mark_flag_as_required("workdir")

  def main(argv) -> None:
    no_positional_arguments(argv)
    workdir, debug = flags.FLAGS.workdir, flags.FLAGS.debug
    train_data, test_data = flags.FLAGS.train_data, flags.FLAGS.test_data
    quiet_libraries(debug)
    if bool(train_data) != bool(test_data):
      raise SystemExit("error: --train_data and --test_data go together (the probe is fit on "
                       "the first and tested on the second).")
    from ssl_jax import storage, train  # the shell that rebuilds a run
    t0 = time.time()
    path = storage.join(workdir, "eval.json")
    previous = storage.read_json(path) if storage.exists(path) else {}
    if train_data:
      from ssl_jax.evaluate import other_data
      result = run_guarded(lambda: train.evaluate_on(workdir, train_data, test_data), debug)
      result["wall_seconds"] = time.time() - t0
      # Beside the run's own evaluation: one entry per (train, test) pair.
      written = {**previous, "datasets": {**previous.get("datasets", {}),
                                          other_data.result_key(train_data, test_data): result}}
    else:
      result = run_guarded(lambda: train.evaluate_checkpoint(workdir), debug)
      result["wall_seconds"] = time.time() - t0
      written = {**result, **({"datasets": previous["datasets"]} if "datasets" in previous
                              else {})}
    storage.write_json_atomic(path, written)
    print(json.dumps(result, indent=2))
    print(evaluation_sentence(result, path))

  app.run(main, flags_parser=parse_flags)
