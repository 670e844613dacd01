"""A full disk, injected where orbax reports it: one line, the partial save removed,
the previous checkpoint kept, exit status 74. (`tests/test_stops.py` fills a real
tmpfs during a run where the tests may mount one.)"""

import errno

import numpy as np
import pytest
from flax import struct

from ssl_jax import checkpoint, cli, reporting, run_config, storage
from tests.helpers import tiny_config


@struct.dataclass
class _State:
  step: np.ndarray
  w: np.ndarray


def _state(step):
  return _State(np.int32(step), np.arange(2 ** 18, dtype=np.float32))   # 1 MiB


def test_a_save_on_a_full_disk_removes_its_partial_files_and_keeps_the_last(tmp_path,
                                                                           monkeypatch):
  manager = checkpoint.create_manager(str(tmp_path))
  checkpoint.save(manager, _state(1), wait=True)
  checkpoint.save(manager, _state(1), wait=True)   # asked again: saved once, no error
  partial = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1234"

  def full_disk_save(step, args=None, force=False):
    (partial / "default").mkdir(parents=True)
    (partial / "default" / "chunk").write_bytes(b"\0" * 1000)
    # What orbax raises: tensorstore's error, a ValueError, not an OSError.
    raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "...": Failed to write '
                     "317297 bytes to file 11: No space left on device [os_error_code='28']")
  monkeypatch.setattr(manager, "save", full_disk_save)
  with pytest.raises(storage.DiskFull) as e:
    checkpoint.save(manager, _state(2), wait=True)
  assert str(e.value).startswith(
      f"no space left on device in {tmp_path}/checkpoints: the checkpoint of step 2 needs "
      "about 1.0 MiB and ")
  assert str(e.value).endswith("its partial files were removed. The checkpoint of step 1 is "
                               "kept: free some space and rerun the same command to resume "
                               "from it.")
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


@pytest.mark.parametrize("error", [
    storage.DiskFull("no space left on device in /x: ..."),
    OSError(errno.ENOSPC, "No space left on device", "/x/metrics.jsonl"),
    ValueError("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']"),
])
def test_a_full_disk_anywhere_exits_74_with_one_line(error, capsys):
  def work():
    raise error
  with pytest.raises(SystemExit) as e:
    cli.run_guarded(work, debug=False)
  assert e.value.code == storage.DISK_FULL_EXIT_CODE == 74
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: no space left on device"), err
  assert storage.is_disk_full(error)
  assert not storage.is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_counts_agree_with_their_nouns_and_accuracies_print_as_percent():
  assert [reporting.count(n, "epoch") for n in (1, 2)] == ["1 epoch", "2 epochs"]
  assert [reporting.count(n, "class") for n in (1, 10)] == ["1 class", "10 classes"]
  assert reporting.percent(0.349) == "34.90%"


def test_a_warmup_as_long_as_the_run_gets_a_note():
  config = tiny_config(**{"num_epochs": 1, "optim.warmup_epochs": 10})
  note = run_config.warmup_note(config)
  assert note.startswith("note: optim.warmup_epochs=10 is not less than num_epochs=1: the "
                         "warmup is cut to the run's length")
  config = tiny_config(**{"num_epochs": 12, "optim.warmup_epochs": 1})
  assert run_config.warmup_note(config) is None


def test_the_linear_probe_bar_shows_no_image_rate():
  import io
  stream = io.StringIO()
  bar = reporting.Progress(4, "linear probe (epochs)", 500, stream=stream, show_rate=False)
  bar.update(4)
  assert "img/s" not in stream.getvalue() and "4/4" in stream.getvalue()


def test_a_failed_saves_unretrieved_orbax_task_is_not_logged():
  """asyncio's "Task exception was never retrieved" for an orbax write of a save that
  failed is dropped (the run said it in one line); other asyncio errors are kept."""
  import logging
  import sys
  from absl import logging as absl_logging
  from ssl_jax import cli
  saved = (sys.unraisablehook, absl_logging.get_verbosity(),
           {n: list(logging.getLogger(n).filters) for n in ("absl", "asyncio")})
  cli.quiet_libraries(debug=False)
  seen = []

  class Keep(logging.Handler):
    def emit(self, record):
      seen.append(record.getMessage())
  handler = Keep()
  logger = logging.getLogger("asyncio")
  logger.addHandler(handler)
  try:
    logger.error("Task exception was never retrieved\nfuture: <Task finished coro=<NumpyHandler."
                 "_open_and_write() defined at /x/orbax/checkpoint/type_handlers.py:114>>")
    logger.error("Task exception was never retrieved\nfuture: <Task finished coro=<mine()>>")
  finally:
    logger.removeHandler(handler)
    sys.unraisablehook = saved[0]
    absl_logging.set_verbosity(saved[1])
    for name, filters in saved[2].items():
      logging.getLogger(name).filters = filters
  assert len(seen) == 1 and "mine()" in seen[0]
