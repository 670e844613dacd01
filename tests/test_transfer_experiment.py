"""experiments/transfer: the seen and unseen class folders, the unseen evaluation of each
run, and the report; the smoke preset end to end in `-m slow`."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from experiments import sweep
from experiments.transfer import config as config_lib
from experiments.transfer import run as transfer
from tests.helpers import committed_record_differences, needs_cifar10, run_experiment

def _archive(path, per_class=3, classes=config_lib.SEEN + config_lib.UNSEEN):
  buf = io.BytesIO()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, "JPEG")
  with tarfile.open(path, "w:gz") as tar:
    for split in ("train", "test"):
      for c in classes:
        for i in range(per_class):
          info = tarfile.TarInfo(f"cifar10/{split}/{c}/{i}.jpg")
          info.size = len(buf.getvalue())
          tar.addfile(info, io.BytesIO(buf.getvalue()))
  return str(path)


def test_the_class_folders_split_seen_from_unseen_once(tmp_path):
  config = config_lib.get_config("smoke")
  config.archive = _archive(tmp_path / "a.tar.gz")
  config.data_root = str(tmp_path / "data")
  config.train_per_class, config.test_per_class = 2, 1
  seen, unseen = transfer.folders(config)
  for root, classes in ((seen, config_lib.SEEN), (unseen, config_lib.UNSEEN)):
    for split, n in (("train", 2), ("test", 1)):
      got = {c: len(os.listdir(os.path.join(root, split, c)))
             for c in os.listdir(os.path.join(root, split))}
      assert got == {c: n for c in classes}
  config.archive = str(tmp_path / "gone.tar.gz")   # written once: the archive is not read again
  assert transfer.folders(config) == (seen, unseen)
  config.archive = _archive(tmp_path / "b.tar.gz", classes=config_lib.SEEN)
  config.data_root = str(tmp_path / "other")
  with pytest.raises(sweep.SweepError, match="lacks images for the class folders"):
    transfer.folders(config)


def test_the_committed_records_are_what_the_sweep_asks_for(tmp_path):
  """Every committed (method, seed) record is a run the cpu preset's sweep would reuse;
  a changed recipe would not be (so the check can fail)."""
  config = config_lib.get_config("cpu")
  config.archive = _archive(tmp_path / "a.tar.gz")   # the folders' names, not their images
  config.data_root = str(tmp_path / "data")
  config.train_per_class, config.test_per_class = 2, 1
  diffs = committed_record_differences(config, transfer.variants)
  assert {p: d for p, d in diffs.items() if d} == {}
  config.base.optim.base_lr *= 2
  changed = committed_record_differences(config, transfer.variants)
  assert all(any(d.startswith("optim.base_lr") for d in v) for v in changed.values())


def _summary(seed, knn, unseen=None):
  out = {"seed": seed, "knn_top1": knn, "linear_top1": knn + 0.01, "epochs": 3,
         "num_train_examples": 100, "num_test_examples": 50, "num_params": 1,
         "seconds_per_epoch": 1.0, "images_per_second": 1.0, "dataset": "folder:/x/seen",
         "flops_per_image": 1e9, "train_flops": 3e9,
         "history": [{"epoch": 3, "knn_top1": knn, "epoch_seconds": 1.0, "epoch_steps": 1}],
         "knn_top1_init": 0.1}
  if unseen is not None:
    out["unseen"] = {"knn_top1": unseen, "linear_top1": unseen + 0.02,
                     "lowshot": {"shots_10": {"linear_top1": {"mean": unseen - 0.05}}}}
  return out


def test_the_report_sets_unseen_beside_seen_accuracy(tmp_path):
  config = config_lib.get_config("smoke")
  config.results_dir = str(tmp_path / "out")
  config.budget = 3e9
  results = {"ours": [_summary(0, 0.4, 0.3), _summary(1, 0.5, 0.4)],
             "simclr": [_summary(0, 0.45, None)]}
  unseen = transfer.unseen_rows(results)
  assert set(unseen) == {"ours"} and unseen["ours"]["seeds"] == [0, 1]
  assert unseen["ours"]["knn_top1"].values == (0.3, 0.4)
  assert unseen["ours"]["shots_10"].mean == pytest.approx(0.30)
  md = transfer.report(config, results, "cmd")
  assert "| ours | 2 | 3 | 45.00 ± 5.00 | 46.00 ± 5.00 | 35.00 ± 5.00 | 37.00 ± 5.00 | " \
         "30.00 ± 5.00 |" in md
  assert "| simclr | 1 | 3 | 45.00 | 46.00 | - | - | - |" in md
  saved = json.loads((tmp_path / "out" / "results.json").read_text())
  assert saved["variants"]["unseen"]["ours"]["knn_top1"]["values"] == [0.3, 0.4]


@pytest.mark.slow
@needs_cifar10
def test_the_smoke_preset_pretrains_every_method_and_evaluates_it_on_unseen_classes(tmp_path):
  flags = (f"--config.data_root={tmp_path / 'data'}", f"--config.results_dir={tmp_path / 'out'}",
           f"--config.records_dir={tmp_path / 'records'}")
  proc = run_experiment("transfer", "smoke", tmp_path / "runs", *flags)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  saved = json.loads((tmp_path / "out" / "results.json").read_text())["variants"]
  assert set(saved["unseen"]) == set(config_lib.METHODS)
  for name, row in saved["unseen"].items():
    assert 0.0 <= row["knn_top1"]["mean"] <= 1.0 and 0.0 <= row["shots_10"]["mean"] <= 1.0
    assert (tmp_path / "records" / name / "seed0.unseen.json").exists()
  unseen = json.loads((tmp_path / "runs" / "supervised" / "seed0" / "unseen.json").read_text())
  assert unseen["test_data"].endswith("unseen/test") and "classifier_top1" not in unseen
  # A rerun reuses every run and evaluation: nothing trains or evaluates again.
  again = run_experiment("transfer", "smoke", tmp_path / "runs", *flags, timeout=600)
  assert again.returncode == 0 and "evaluating on the unseen classes" not in again.stdout
  assert "training (" not in again.stdout
