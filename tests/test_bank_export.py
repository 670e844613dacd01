"""`python -m ssl_jax.export --bank`: the bank as embeddings of the training set, named."""

import json
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

from ssl_jax import builders
from ssl_jax import instances
from ssl_jax import sources
from ssl_jax import storage
from tests.helpers import cifar10_folder, needs_cifar10, tiny_config
from tests.test_encoder import _cli, _ok, _one_error_line


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
  """A tiny run of one epoch with the bank stored in bf16, trained through the whole loop."""
  from ssl_jax import train
  workdir = tmp_path_factory.mktemp("bank_run")
  config = tiny_config(**{"bank.dtype": "bfloat16"})
  summary = train.train_and_evaluate(config, str(workdir))
  assert np.isfinite(summary["knn_top1_bank"])
  return workdir, config


def _read_image(root: str, name: str, size: int) -> np.ndarray:
  """A file of the tiny run's source (the shared tar archive), by its name there."""
  import tarfile
  with tarfile.open(root, "r:*") as tar:
    return sources.load_image(tar.extractfile(name).read(), size, name)


@pytest.mark.slow
@needs_cifar10
def test_the_exported_bank_is_the_checkpoints_bank_named_by_its_images(bf16_run, tmp_path):
  workdir, config = bf16_run
  out = tmp_path / "bank.npz"
  message = _ok(_cli("ssl_jax.export", "--workdir", workdir, "--bank", out))
  assert f"wrote {out}: the step-7 bank, 500 rows x 128 (stored as bfloat16)" in message
  data = np.load(out, allow_pickle=False)
  saved = ocp.StandardCheckpointer().restore(storage.absolute(
      str(workdir / "checkpoints" / "7" / "default")))
  assert saved["bank"].dtype.name == "bfloat16" and str(data["bank_dtype"]) == "bfloat16"
  np.testing.assert_array_equal(data["z"], np.asarray(saved["bank"], np.float32))
  np.testing.assert_array_equal(data["index"], np.arange(500))
  # Row j is the image training numbered j: same pixels, same label.
  train, _, _ = builders.load_data(config, log=lambda *a: None)
  np.testing.assert_array_equal(data["labels"], train.labels)
  assert str(data["source"]) == f"folder:{config.data.source[len('folder:'):]}"
  for j in (0, 1, 137, 499):
    np.testing.assert_array_equal(
        _read_image(str(data["root"]), str(data["paths"][j]), 32), train.images[j])
  assert list(data["class_names"]) == list(train.class_names)

  # The neighbours command reads it as it reads ssl_jax.embed's output (z: no h in a bank).
  picture = tmp_path / "grid.png"
  shown = _ok(_cli("ssl_jax.neighbors", "--embeddings", out, "--out", picture, "--queries", 3,
                   "--k", 4, "--cell", 32, "--duplicates", 0.9))
  assert picture.stat().st_size > 0
  assert "leave-one-out kNN top-1 (k=200, T=0.1) over 500 images" in shown
  assert "pair(s) with cosine similarity >= 0.9" in shown
  assert str(data["paths"][0]).split("/")[0] in shown   # rows named by their files


@pytest.mark.slow
@needs_cifar10
def test_bank_export_errors_are_one_line(bf16_run, tmp_path):
  workdir, _ = bf16_run
  line = _one_error_line(_cli("ssl_jax.export", "--workdir", workdir))
  assert "give --out FILE (the encoder), --bank FILE.npz" in line
  # The data changed since training: the rows cannot be named, and nothing is written.
  moved = tmp_path / "run"
  shutil.copytree(workdir, moved)
  config = json.loads((moved / "config.json").read_text())
  config["data"]["fraction"] = 0.02
  (moved / "config.json").write_text(json.dumps(config))
  line = _one_error_line(_cli("ssl_jax.export", "--workdir", moved, "--bank", tmp_path / "b.npz"))
  assert "now gives 1000 training instances (fraction 0.02), but the run trained on 500" in line
  assert not (tmp_path / "b.npz").exists()
  # A method without a bank.
  config["data"]["fraction"], config["method"] = 0.01, "simclr"
  (moved / "config.json").write_text(json.dumps(config))
  line = _one_error_line(_cli("ssl_jax.export", "--workdir", moved, "--bank", tmp_path / "b.npz"))
  assert "trained simclr, which keeps no memory bank" in line


@needs_cifar10
def test_skipped_files_are_left_out_of_the_names_as_training_left_them_out(tmp_path):
  root = cifar10_folder(tmp_path / "data", train_per_class=6, test_per_class=2)
  broken = sorted((tmp_path / "data" / "train" / "cat").iterdir())[2]
  broken.write_bytes(b"not a jpeg")
  config = tiny_config(**{"data.source": f"folder:{root}", "data.fraction": 0.5,
                          "data.skip_corrupt": True, "data.cache_dir": ""})
  train, _, _ = builders.load_data(config, log=lambda *a: None)
  named = instances.training_instances(config, len(train), log=lambda *a: None)
  assert list(named["skipped"]) == [f"train/cat/{broken.name}"]
  assert len(named["paths"]) == len(train) == 30   # half of the 59 readable files, rounded
  np.testing.assert_array_equal(named["labels"], train.labels)
  for j, name in enumerate(named["paths"]):
    np.testing.assert_array_equal(
        sources.load_image((tmp_path / "data" / str(name)).read_bytes(), 32, name),
        train.images[j])
