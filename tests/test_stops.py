"""Runs stopped at exact steps: checkpoint cadences that meet an epoch's end, SIGTERM and
Ctrl-C there or mid-way through a logging window, a second Ctrl-C, a full disk.

Every run is the tiny run of `tests.runs` (7 steps per epoch, 21 in all, a
record every 2 steps) through `tests/stop_at_step.py`, which signals it right
after a given step. Each must end with its summary, equal to the
uninterrupted `reference_run` (checkpoints every 5 steps) in every parameter,
every logged training record and every evaluation.
"""

import subprocess

import pytest

from tests import runs
from tests.helpers import needs_cifar10

TOTAL_STEPS = runs.TOTAL_STEPS


def _error_lines(out: str) -> list[str]:
  return [l for l in out.splitlines() if l.startswith(("error:", "preempted:", "interrupted:"))]


@pytest.mark.slow
@needs_cifar10
def test_sigterm_at_an_epoch_end_with_step_checkpoints_there(reference_run, tmp_path):
  """Step checkpoints every 7 steps meet every epoch's end (7, 14) and the last step
  (21); SIGTERM lands on step 7, an epoch's end; the rerun starts an epoch."""
  cadence = "--config.checkpoint_every_steps=7"
  out = runs.run(tmp_path, cadence, expect=143, STOP_AT="SIGTERM@7")
  assert _error_lines(out) == [
      f"preempted: received SIGTERM: checkpoint saved at step 7 in {tmp_path}/checkpoints. "
      "Rerun the same command to resume."], out[-3000:]
  assert "Traceback" not in out and "already exists" not in out
  out = runs.run(tmp_path, cadence)
  assert "resuming from checkpoint at step 7 (epoch 1)" in out
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [7, 14, 21]
  runs.assert_same_run(reference_run, tmp_path)


@needs_cifar10
@pytest.mark.slow
def test_step_checkpoints_every_two_epochs(reference_run, tmp_path):
  """A step cadence twice the epoch (14) meets the second epoch's end, where the
  epoch cadence (every 2 epochs) asks too; the last step (21) is saved as the end."""
  runs.run(tmp_path, "--config.checkpoint_every_steps=14", "--config.checkpoint_every_epochs=2")
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [14, 21]
  runs.assert_same_run(reference_run, tmp_path)


@needs_cifar10
def test_ctrl_c_mid_window_with_a_checkpoint_every_step(reference_run, tmp_path):
  """A checkpoint every step (the cadence divides the epoch); Ctrl-C after step 13,
  inside the logging window 13-14, so the rerun's first step (14) ends an epoch and
  closes a window the first process opened. The records equal the reference's."""
  cadence = "--config.checkpoint_every_steps=1"
  out = runs.run(tmp_path, cadence, expect=130, STOP_AT="SIGINT@13")
  assert "Ctrl-C: finishing this step and writing a checkpoint" in out
  assert _error_lines(out) == [
      f"interrupted: stopped by Ctrl-C: checkpoint saved at step 13 in {tmp_path}/checkpoints. "
      "Rerun the same command to resume."], out[-3000:]
  assert "Traceback" not in out and "KeyboardInterrupt" not in out
  assert runs.training_records(tmp_path)[-1]["step"] == 12   # the window 13-14 is open
  out = runs.run(tmp_path, cadence)
  assert "resuming from checkpoint at step 13 (epoch 1)" in out
  runs.assert_same_run(reference_run, tmp_path)


@needs_cifar10
def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path):
  out = runs.run(tmp_path, expect=130, STOP_AT="SIGINT@9,SIGINT@9")
  assert "stopped by a second Ctrl-C at once, without a checkpoint" in out, out[-3000:]
  assert "Traceback" not in out and "KeyboardInterrupt" not in out
  committed = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  # Every 5 steps and every epoch: 5, and 7 if its asynchronous save finished first.
  assert "5" in committed and "9" not in committed and set(committed) <= {"5", "7"}
  assert "lock.json" in {p.name for p in tmp_path.iterdir()}   # the rerun takes it over


def _mount_tmpfs(where, size: str) -> bool:
  where.mkdir()
  try:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                   check=True, capture_output=True, timeout=30)
    return True
  except (OSError, subprocess.SubprocessError):
    return False


@needs_cifar10
@pytest.mark.slow
def test_sigterm_on_a_full_disk_says_so_in_one_line_and_keeps_the_last_checkpoint(
    reference_run, tmp_path):
  """A real full file system (a small tmpfs): after step 11 the disk is filled but for
  64 KiB, then SIGTERM; the checkpoint of step 11 cannot be written."""
  disk = tmp_path / "disk"
  if not _mount_tmpfs(disk, "64m"):
    pytest.skip("cannot mount a tmpfs here (needs root); "
                "tests/test_disk_full.py injects the error instead")
  try:
    workdir = disk / "run"
    out = runs.run(workdir, expect=74, STOP_AT="SIGTERM@11", FILL_DISK_AT=11)
    lines = [l for l in out.splitlines() if l.strip() and not l.startswith(("epoch ", "  "))]
    errors = _error_lines(out)
    assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert errors[0].startswith(f"error: SIGTERM at step 11, but its checkpoint could not be "
                                f"written: no space left on device in {workdir}/checkpoints: "
                                "the checkpoint of step 11 needs about "), errors[0]
    assert "The checkpoint of step 10 is kept" in errors[0], errors[0]
    assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
    assert lines[-1] == errors[0], lines[-5:]
    (workdir / "filler").unlink()
    out = runs.run(workdir)
    assert "resuming from checkpoint at step 10 " in out
    runs.assert_same_run(reference_run, workdir)
  finally:
    subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)
