"""First contact: every command-line slip is one `error:` line with exit status 1,
and the data source line says why the run reads what it reads."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICK = ["--config", "configs/quickstart.py"]


def _cli(*args, module="ssl_jax.main", timeout=120):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=timeout)


def _one_error_line(proc) -> str:
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  return lines[0]


@pytest.fixture(scope="module")
def broken_configs(tmp_path_factory):
  folder = tmp_path_factory.mktemp("configs")
  (folder / "syntax.py").write_text("def get_config(:\n")
  (folder / "raises.py").write_text("def get_config():\n  return 1 / 0\n")
  return folder


@pytest.mark.parametrize("args, expected", [
    ([*QUICK, "--workdir", "W", "--config.data.sorce=x"],
     "error: --config.data.sorce=x: config.data has no field 'sorce' (did you mean 'source'?)."),
    (["--config", "configs/nope.py", "--workdir", "W"],
     "error: --config: no config file at 'configs/nope.py'."),
    (["--config", "configs/quickstart.py:moco", "--workdir", "W"],
     "error: --config=configs/quickstart.py:moco: config.method must be one of"),
    ([*QUICK, "--workdir", "W", "--config.batch_size=abc"],
     "error: --config.batch_size=abc: invalid literal for int()"),
    ([*QUICK], "error: --workdir is required."),
    ([*QUICK, "--workdir", "W", "again"], "error: unexpected argument 'again'"),
    ([*QUICK, "--workdir", "W", "--wrkdir=W"], "error: Unknown command line flag 'wrkdir'"),
])
def test_command_line_slips_are_one_line(args, expected, tmp_path):
  args = [str(tmp_path / a) if a == "W" else a for a in args]
  assert _one_error_line(_cli(*args)).startswith(expected)
  assert not (tmp_path / "W").exists()  # nothing created


def test_broken_config_files_are_one_line(broken_configs, tmp_path):
  line = _one_error_line(_cli("--config", str(broken_configs / "syntax.py"), "--workdir",
                              str(tmp_path)))
  assert line.startswith(f"error: --config={broken_configs / 'syntax.py'}: ") and "line 1" in line
  line = _one_error_line(_cli("--config", str(broken_configs / "raises.py"), "--workdir",
                              str(tmp_path)))
  assert line.endswith("ZeroDivisionError: division by zero")


def test_debug_shows_the_traceback(tmp_path):
  proc = _cli(*QUICK, "--workdir", str(tmp_path), "--config.data.sorce=x", "--debug")
  assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_evaluate_and_experiment_command_lines_are_one_line(tmp_path):
  assert _one_error_line(_cli(module="ssl_jax.evaluate")) == "error: --workdir is required."
  line = _one_error_line(_cli("--workdir", str(tmp_path / "none"), module="ssl_jax.evaluate"))
  assert "is not a training workdir" in line or "not found" in line
  line = _one_error_line(_cli("--config", "experiments/ablation/config.py:cpu", "--workdir",
                              str(tmp_path), "--config.base.optim.lr=1",
                              module="experiments.ablation.run"))
  assert line.startswith("error: --config.base.optim.lr=1: config.base.optim has no field 'lr'")
  line = _one_error_line(_cli("--config", "experiments/compare/config.py:nope", "--workdir",
                              str(tmp_path), module="experiments.compare.run"))
  assert line.startswith("error: --config=experiments/compare/config.py:nope: ")


def test_the_data_source_line_gives_the_reason_of_the_source_used(tmp_path):
  proc = _cli(*QUICK, "--workdir", str(tmp_path / "w"), "--config.data.source=folder:/nonexistent")
  assert "data source: folder:/nonexistent (given on the command line)" in proc.stdout
  assert _one_error_line(proc) == ("error: config.data.source: path /nonexistent does not "
                                   "exist.")


def test_an_unusable_workdir_is_one_line(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  line = _one_error_line(_cli(*QUICK, "--workdir", str(a_file)))
  assert line == f"error: workdir {a_file} is a file, not a folder."
  line = _one_error_line(_cli(*QUICK, "--workdir", str(a_file / "run")))
  assert line.startswith(f"error: workdir {a_file / 'run'} cannot be created: Not a directory")


def test_labels_that_make_evaluation_meaningless_give_a_note():
  import numpy as np
  from ssl_jax import builders, data as data_lib

  def split(labels, names=("cat", "dog", "fox")):
    labels = np.asarray(labels, np.int32)
    return data_lib.Split(np.zeros((len(labels), 2, 2, 3), np.uint8), labels, names)

  assert builders.label_notes(split([0, 1, 2, 0]), split([2, 1])) == []
  [note] = builders.label_notes(split([1, 1, 1]), split([1]))
  assert note.startswith("note: the training split has one class (dog)")
  [note] = builders.label_notes(split([0, 1, 0]), split([0, 2, 2]))
  assert note.startswith("note: 1 test class(es) never appear in training (fox)")
