"""The streaming input (config.data.stream=True) on real CIFAR-10 JPEGs in a folder tree.

Checked: the global batches are the in-memory path's, for any worker count
and resume point; a host crop depends on (seed, step, instance, view) only;
evaluation decodes exactly as the in-memory path; a damaged record stops the
run naming it, or is replaced and counted; a streaming run trains, resumes
and reports its input.
"""

import json
import os
import pathlib

import jax
import numpy as np
import pytest

from configs import default
from ssl_jax import data as data_lib
from ssl_jax import decoders, stream
from ssl_jax.sources import DataError
from tests.helpers import cifar10_folder, needs_cifar10

pytestmark = needs_cifar10


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return cifar10_folder(tmp_path_factory.mktemp("cifar"), train_per_class=12, test_per_class=5)


def _data_cfg(source, **overrides):
  cfg = default.get_config().data
  cfg.unlock()
  cfg.source, cfg.stream, cfg.cache_dir = source, True, ""
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _in_memory(cfg):
  cfg = cfg.copy_and_resolve_references()
  cfg.stream = False
  return cfg


def _epoch(split, *, workers=0, start_step=0, views=1, epoch=1, seed=3):
  split.images.workers = workers
  batches = stream.TrainStream(split, global_batch=20, num_local_devices=2, seed=seed,
                               epoch=epoch, start_step=start_step, views=views,
                               scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
  return list(batches), batches


def test_batches_follow_the_in_memory_order_for_any_worker_count_and_resume(folder):
  cfg = _data_cfg(f"folder:{folder}")
  split = stream.load_split(cfg, "train", fraction=0.5, seed=0)
  memory, _ = data_lib.load_shard(_in_memory(cfg), "train", fraction=0.5, seed=0)
  assert split.num_examples == memory.num_examples == 60
  np.testing.assert_array_equal(split.labels, memory.labels)
  want = [b["index"] for b in data_lib.train_batches(memory, global_batch=20, num_local_devices=2,
                                                      seed=3, epoch=1)]
  serial, _ = _epoch(split, workers=0)
  pooled, _ = _epoch(split, workers=2)
  resumed, _ = _epoch(split, workers=2, start_step=1)
  assert len(serial) == len(want) == 3
  for k, b in enumerate(serial):
    np.testing.assert_array_equal(b["index"], want[k])
    assert b["image"].shape == (2, 10, 32, 32, 3) and b["image"].dtype == np.uint8
    np.testing.assert_array_equal(pooled[k]["image"], b["image"])
  for k, b in enumerate(resumed, 1):
    np.testing.assert_array_equal(b["image"], serial[k]["image"])
    np.testing.assert_array_equal(b["index"], serial[k]["index"])


def test_a_crop_depends_on_seed_step_instance_and_view_only(folder):
  split = stream.load_split(_data_cfg(f"folder:{folder}"), "train", fraction=1.0, seed=0)
  (first, *_), _ = _epoch(split, views=2)
  assert first["image"].shape == (2, 10, 2, 32, 32, 3)
  images = first["image"].reshape(20, 2, 32, 32, 3)
  # Two views of one image differ, and so do the crops of two instances.
  assert (np.abs(images[:, 0].astype(int) - images[:, 1]).max(axis=(1, 2, 3)) > 0).all()
  # Recomputed from the documented key: step = epoch * steps_per_epoch + t.
  index = int(first["index"].reshape(-1)[4])
  spe = data_lib.steps_per_epoch(split.num_examples, 20)
  data = split.images.reader.records.read(int(split.images.reader.positions[index]))
  for view in (0, 1):
    rng = np.random.default_rng([3, spe, index, view])
    crop = decoders.decode_crop(data, "x", 32, rng, (0.2, 1.0), (3 / 4, 4 / 3))
    np.testing.assert_array_equal(images[4, view], crop)
  other, _ = _epoch(split, views=2, seed=4)
  assert np.abs(other[0]["image"].astype(int) - first["image"]).max() > 0


def test_crop_boxes_lie_in_the_configured_scale_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(500):
    left, top, w, h = decoders.crop_box(rng, 500, 375, (0.2, 1.0), (3 / 4, 4 / 3))
    assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 375
    if w < 500 and h < 375:  # not clipped by the image
      assert 0.2 * 500 * 375 * 0.97 <= w * h <= 500 * 375 * 1.03
      assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03


def test_a_batch_is_cut_into_ordered_pieces_for_the_workers():
  """Each worker decodes a piece of at most CHUNK rows, so one batch spreads over workers."""
  for n in (1, stream.CHUNK, stream.CHUNK + 1, 3 * stream.CHUNK + 5, 512):
    rows = np.arange(2 * n).reshape(n, 2)
    pieces = stream._pieces(rows)
    assert len(pieces) == -(-n // stream.CHUNK)
    sizes = [len(p) for p in pieces]
    assert max(sizes) <= stream.CHUNK and max(sizes) - min(sizes) <= 1
    np.testing.assert_array_equal(np.concatenate(pieces), rows)
  joined = list(stream._joined(iter([{"x": np.arange(3)}, {"x": np.arange(3, 5)},
                                     {"x": np.arange(5, 6)}]), [2, 1]))
  assert [j["x"].tolist() for j in joined] == [[0, 1, 2, 3, 4], [5]]


def test_evaluation_streams_what_the_in_memory_path_decodes(folder):
  cfg = _data_cfg(f"folder:{folder}", workers=2)
  split = stream.load_split(cfg, "test", fraction=1.0, seed=0)
  memory, _ = data_lib.load_shard(_in_memory(cfg), "test", fraction=1.0, seed=0)
  # 40 rows a batch: two pieces, decoded by the two workers
  got = list(data_lib.eval_batches(split, batch_size=40, num_local_devices=2))
  want = list(data_lib.eval_batches(memory, batch_size=40, num_local_devices=2))
  assert len(got) == len(want) == 2
  for g, w in zip(got, want):
    for key in ("image", "label", "index", "mask"):
      np.testing.assert_array_equal(g[key], w[key])


def test_a_damaged_record_stops_the_run_or_is_replaced_and_counted(tmp_path, folder):
  root = tmp_path / "data"
  for split in ("train", "test"):
    for src in sorted(pathlib.Path(folder, split).rglob("*.jpg"))[:6 if split == "train" else 2]:
      dst = root / split / src.parent.name / src.name
      dst.parent.mkdir(parents=True, exist_ok=True)
      dst.write_bytes(src.read_bytes())
  bad = sorted((root / "train").rglob("*.jpg"))[2]
  bad.write_bytes(bad.read_bytes()[:200])  # truncated mid-scan
  split = stream.load_split(_data_cfg(f"folder:{root}"), "train", fraction=1.0, seed=0)
  with pytest.raises(DataError, match=f"{bad.name}.*record 2.*skip_corrupt"):
    _ = split.images[np.arange(6)]
  split = stream.load_split(_data_cfg(f"folder:{root}", skip_corrupt=True), "train",
                            fraction=1.0, seed=0)
  images = split.images[np.arange(6)]
  assert (images[2] == stream.SUBSTITUTE_GRAY).all() and split.images.bad == 1
  for decoder in decoders.DECODERS:
    batches = stream.TrainStream(split, global_batch=6, num_local_devices=1, seed=0, epoch=0,
                                 start_step=0, views=1, scale=(0.2, 1.0), ratio=(0.75, 4 / 3),
                                 decoder=decoder)
    (batch,) = list(batches)
    assert batches.bad == 1
    row = list(batch["index"][0]).index(2)
    assert (batch["image"][0, row] == stream.SUBSTITUTE_GRAY).all()
    if decoder == "simplejpeg":   # a gray canvas whose window is the whole view
      assert batch["image"].shape[2] == 64
      np.testing.assert_array_equal(batch["box"][0, row], [0, 0, 32, 32])


def test_one_line_errors_before_anything_compiles(tmp_path, folder):
  from ssl_jax import records
  archive = tmp_path / "x.tar.gz"
  archive.write_bytes(b"")
  with pytest.raises(DataError, match="reads a folder of image files.*extract it first"):
    records.open_records(f"folder:{archive}", "train")
  with pytest.raises(DataError, match="does not exist"):
    records.open_records(f"folder:{tmp_path}/nowhere", "train")
  with pytest.raises(DataError, match="split folder .*validation.* not found"):
    records.open_records(f"folder:{folder}", "validation")
  with pytest.raises(DataError, match="tfds_data_dir .* does not exist"):
    records.open_records("tfds:cifar10", "train", str(tmp_path / "no_tfds"))


@pytest.mark.slow
def test_a_streaming_run_trains_resumes_and_reports_its_input(tmp_path, folder):
  from tests.test_end_to_end import _cli
  workdir = str(tmp_path / "run")
  common = ["--config", "configs/quickstart.py", "--workdir", workdir,
            f"--config.data.source=folder:{folder}", "--config.data.stream=True",
            "--config.data.workers=2", "--config.data.fraction=1", "--config.data.test_fraction=1",
            "--config.batch_size=40", "--config.bank.lr=2", "--config.model.name=resnet10",
            "--config.model.width=0.125", "--config.eval.linear_epochs=2",
            "--config.eval.every_epochs=1", "--config.eval.knn_source=bank"]
  out = _cli("ssl_jax.main", *common, "--config.num_epochs=1")
  assert "streaming 120 of the 120 examples" in out and "input decodes" in out
  # The calibration is the only pass over the training images before step 1:
  # the untrained network's kNN reads the calibrated bank.
  assert "passes over the training data before step 1: 1\n" in out
  assert "untrained network: kNN top-1" in out and "% (bank)" in out
  assert "epoch 1: kNN top-1" not in out  # the last epoch's kNN is the final evaluation's
  # Resumed with the window decoder (the device resizes): both decoders train, and
  # the resume says its pixels change.
  out = _cli("ssl_jax.main", *common, "--config.num_epochs=3", "--config.data.decoder=simplejpeg")
  assert "resuming from checkpoint at step 3 (epoch 1)" in out
  assert "last decoded its stream with pillow" in out and "with simplejpeg" in out
  assert "epoch 2: kNN top-1" in out and "(bank)" in out
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["input_pipeline"] == "stream" and summary["corrupt_records"] == 0
  assert 0.0 <= summary["knn_top1_bank"] <= 1.0 and "knn_top1" in summary
  epochs = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))
            if "epoch_seconds" in l]
  assert [r["epoch"] for r in epochs] == [1, 2, 3]
  assert "knn_top1_bank" in epochs[1] and "knn_top1" not in epochs[1]
  assert all(r["input_images_per_second"] > 0 for r in epochs)


class _DiesOnRecord:
  """A record source whose read of one record kills the worker process reading it."""

  def __init__(self, records, position):
    self.records, self.position = records, position
    self.description = records.description

  def read(self, i):
    if int(i) == self.position:
      os._exit(9)
    return self.records.read(i)

  def name(self, i):
    return self.records.name(i)


def test_a_worker_that_dies_stops_the_epoch_with_one_line_not_a_hang(folder):
  split = stream.load_split(_data_cfg(f"folder:{folder}"), "train", fraction=1.0, seed=0)
  reader = split.images.reader
  reader.records = _DiesOnRecord(reader.records, int(reader.positions[7]))
  with pytest.raises(stream.WorkerDied, match="data worker process died.*exit code 9"):
    _epoch(split, workers=2)


def test_one_process_with_two_shards_streams_what_two_processes_do(folder):
  cfg = _data_cfg(f"folder:{folder}")
  whole = stream.load_split(cfg, "train", fraction=1.0, seed=0, num_shards=2)
  parts = [stream.load_split(cfg, "train", fraction=1.0, seed=0, num_shards=2,
                             process_index=p, process_count=2) for p in range(2)]
  (one, *_), _ = _epoch(whole)
  seen = []
  for p, part in enumerate(parts):
    part.images.workers = 0
    batches = list(stream.TrainStream(part, global_batch=20, num_local_devices=1, seed=3,
                                      epoch=1, start_step=0, views=1, scale=(0.2, 1.0),
                                      ratio=(3 / 4, 4 / 3)))
    np.testing.assert_array_equal(batches[0]["index"].reshape(-1), one["index"][p])
    np.testing.assert_array_equal(batches[0]["image"][0], one["image"][p])
    seen.append(np.concatenate([b["index"].reshape(-1) for b in batches]))
  # The two processes' rows are disjoint, and the epoch covers every instance.
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(range(whole.num_examples))


@pytest.mark.extended
@pytest.mark.parametrize("decoder", decoders.DECODERS)
def test_a_streamed_run_learns(tmp_path, decoder):
  """The learning tests' recipe, streamed from a folder of 2,500 + 1,000 CIFAR-10 JPEGs
  with each decoder for 12 epochs: kNN beats the untrained network by the streamed
  recipe's own margin (tests/learning_margins.md; `-m extended`)."""
  from tests.helpers import LEARNING_EPOCHS, LEARNING_MARGINS, learning_command
  from tests.test_end_to_end import _cli
  root = cifar10_folder(tmp_path / "cifar", train_per_class=250, test_per_class=100)
  workdir = str(tmp_path / "run")
  _cli("ssl_jax.main", *learning_command("ours", workdir, epochs=LEARNING_EPOCHS["ours_stream"]),
       f"--config.data.source=folder:{root}",
       "--config.data.stream=True", "--config.data.workers=2", "--config.data.fraction=1",
       "--config.data.test_fraction=1", f"--config.data.decoder={decoder}")
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["input_pipeline"] == "stream" and summary["num_train_examples"] == 2500
  assert summary["knn_top1"] > summary["knn_top1_init"] + LEARNING_MARGINS["ours_stream"], summary


def test_data_workers_leave_ctrl_c_to_the_training_process():
  """A terminal's Ctrl-C reaches every process of its group; a Grain worker ignores
  it, so the training process alone decides (checkpoint, then it ends the workers)."""
  import subprocess
  import sys
  code = ("import signal; from ssl_jax import stream; stream._worker_init(0, 2); "
          "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert proc.stdout.strip() == "True", proc.stderr[-2000:]


def test_minus_one_workers_is_one_per_core_this_process_may_use():
  assert stream.worker_count(-1) == len(os.sched_getaffinity(0)) >= 1
  assert stream.worker_count(0) == 0 and stream.worker_count(3) == 3


def test_prefetch_keeps_the_configured_number_of_batches_ahead():
  from ssl_jax import devices
  pulled = []

  def batches():
    for i in range(5):
      pulled.append(i)
      yield np.full((jax.local_device_count(), 2), i, np.float32)
  for depth in (1, 3):
    pulled.clear()
    it = devices.prefetch(batches(), depth)
    first = next(it)
    assert float(np.asarray(first).reshape(-1)[0]) == 0 and len(pulled) == depth
    assert [float(np.asarray(b).reshape(-1)[0]) for b in it] == [1, 2, 3, 4]
