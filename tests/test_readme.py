"""The README's code examples run as written."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_loss_example_runs(capsys):
  blocks = _python_blocks()
  assert blocks, "README has no python example"
  namespace = {}
  exec(compile(blocks[0], str(README), "exec"), namespace)
  assert "loss after 20 steps" in capsys.readouterr().out
  bank = np.asarray(namespace["bank"])
  np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1.0, rtol=1e-5)
  assert np.isfinite(float(namespace["loss"]))
