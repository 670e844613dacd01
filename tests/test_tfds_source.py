"""The tfds: source through tf.data, on TFDS's mock data (no download)."""

import ml_collections
import numpy as np
import pytest

from ssl_jax import data as data_lib

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("name,size", [("cifar10", 32), ("stl10", 24)])
def test_tfds_split_is_decoded_in_stored_order(name, size):
  cfg = ml_collections.ConfigDict(dict(source=f"tfds:{name}", image_size=size))
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    split, skipped = data_lib.load_split(cfg, "train")
    again, _ = data_lib.load_split(cfg, "train")
  assert skipped == 0
  assert split.images.shape == (12, size, size, 3) and split.images.dtype == np.uint8
  assert split.labels.dtype == np.int32 and len(split.class_names) == 10
  # Instance i is the i-th stored example: the same order on every read.
  np.testing.assert_array_equal(split.images, again.images)


def test_unknown_tfds_dataset_is_a_clear_error():
  # (A wrong split name cannot be tested offline: TFDS's mock data accepts any.)
  cfg = ml_collections.ConfigDict(dict(source="tfds:cifar11", image_size=32))
  with pytest.raises(data_lib.DataError, match="no TFDS dataset is named 'cifar11'"):
    data_lib.load_split(cfg, "train")



class TinyImages(tfds.core.GeneratorBasedBuilder):
  """A real (not mocked) 10-image TFDS dataset, built in a temporary data_dir."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, supervised_keys=("image", "label"),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(10)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": np.full((8, 8, 3), i, np.uint8), "label": i % 3}


def test_tfds_process_reads_only_its_slice(tmp_path):
  cfg = ml_collections.ConfigDict(dict(source="tfds:tiny_images", image_size=8,
                                       tfds_data_dir=str(tmp_path)))
  whole, _ = data_lib.load_split(cfg, "train")
  assert len(whole) == 10
  for fraction, shards in [(1.0, 2), (0.6, 4)]:
    parts = [data_lib.load_shard(cfg, "train", fraction=fraction, seed=1, num_shards=shards,
                                 process_index=p, process_count=2, log=lambda *a: None)[0]
             for p in range(2)]
    sub = data_lib.subset(whole, fraction, 1)
    assert [q.num_examples for q in parts] == [len(sub)] * 2
    np.testing.assert_array_equal(np.concatenate([q.images for q in parts]), sub.images)
    np.testing.assert_array_equal(np.concatenate([q.labels for q in parts]), sub.labels)


@pytest.mark.extended
def test_embedding_a_tfds_split_with_an_encoder():
  """`python -m ssl_jax.embed --images tfds:NAME:SPLIT` reads the split through TFDS."""
  import jax
  from ssl_jax import builders, embed, encoder as encoder_lib
  from tests.helpers import tiny_config
  config = tiny_config()
  model = builders.build_model(config, bn_axis_name=None)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
  encoder = encoder_lib.Encoder(config, dict(variables), encoder_lib._apply_fn(config), 0)
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    images = embed.open_images("tfds:cifar10:test", encoder.image_size)
    arrays = embed.embed_images(encoder, images, batch_size=5, progress=False)
  assert arrays["h"].shape[0] == 12 and list(arrays["paths"]) == [str(i) for i in range(12)]
  assert str(arrays["root"]) == "tfds:cifar10:test" and len(arrays["class_names"]) == 10
  np.testing.assert_array_equal(arrays["z"], encoder.embed(images.decoded)[1])


class TinyJpegs(tfds.core.GeneratorBasedBuilder):
  """A real 12-image TFDS dataset of JPEGs of several sizes, for the streaming input."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

  SIZES = {"train": 12, "test": 5}

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(n) for split, n in self.SIZES.items()}

  def _generate_examples(self, n):
    rng = np.random.default_rng(n)
    for i in range(n):
      image = rng.integers(0, 256, (20 + 4 * (i % 12), 30 + 2 * (i % 7), 3), np.uint8)
      yield i, {"image": image, "label": i % 3}


def _stream_cfg(source, data_dir, **kw):
  from configs import default
  cfg = default.get_config().data
  cfg.unlock()
  cfg.update(dict(source=source, tfds_data_dir=str(data_dir), image_size=16, stream=True,
                  cache_dir="", **kw))
  return cfg


def test_streaming_an_array_record_dataset_keeps_its_record_order(tmp_path):
  from ssl_jax import stream
  TinyJpegs(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  cfg = _stream_cfg("tfds:tiny_jpegs", tmp_path)
  split = stream.load_split(cfg, "train", fraction=0.5, seed=0, num_shards=2, process_index=1,
                            process_count=2)
  # TFDS's own decoding of the same records (instances 3..5 are process 1's rows).
  from ssl_jax import sources
  decoded = tfds.data_source("tiny_jpegs", split="train", data_dir=str(tmp_path))
  positions = data_lib.subset_positions(12, 0.5, 0)[3:]
  assert split.num_examples == 6 and split.class_names == ("a", "b", "c")
  np.testing.assert_array_equal(split.labels, [decoded[int(p)]["label"] for p in positions])
  want = [sources.to_rgb_array(sources.as_pil(decoded[int(p)]["image"]), 16, "x")
          for p in positions]
  np.testing.assert_array_equal(split.images[np.arange(3)], np.stack(want))
  memory_cfg = cfg.copy_and_resolve_references()
  memory_cfg.stream = False
  with pytest.raises(data_lib.DataError, match="ArrayRecord format.*data.stream=True"):
    data_lib.load_split(memory_cfg, "train")
  batches = stream.TrainStream(split, global_batch=4, num_local_devices=1, seed=0, epoch=0,
                               start_step=0, views=2, scale=(0.2, 1.0), ratio=(0.75, 4 / 3))
  out = list(batches)
  assert len(out) == 1 and out[0]["image"].shape == (1, 2, 2, 16, 16, 3)
  assert set(out[0]["index"].reshape(-1)) <= {3, 4, 5}


def test_streamed_tfds_labels_are_read_once_then_come_from_the_cache(tmp_path, monkeypatch):
  from ssl_jax import records, stream
  TinyJpegs(data_dir=str(tmp_path / "data"), file_format="array_record").download_and_prepare()
  cfg = _stream_cfg("tfds:tiny_jpegs", tmp_path / "data")
  truth = [r["label"] for r in tfds.data_source("tiny_jpegs", split="train",
                                                 data_dir=str(tmp_path / "data"))]
  reads = []
  read = records.TfdsRecords._read_labels
  monkeypatch.setattr(records.TfdsRecords, "_read_labels",
                      lambda self, pos, log=print: reads.append(len(pos)) or read(self, pos, log))

  def load(fraction, cache_dir=""):
    lines = []
    split = stream.load_split(cfg, "train", fraction=fraction, seed=0, log=lines.append,
                              cache_dir=cache_dir)
    want = [truth[p] for p in data_lib.subset_positions(12, fraction, 0)]
    np.testing.assert_array_equal(split.labels, want)
    return next(line for line in lines if line.startswith("labels of"))

  # Half the split: those 6 records are read, and cached beside the data.
  line = load(0.5)
  beside = tmp_path / "data" / "tiny_jpegs" / "1.0.0" / "ssl_jax-labels-train.npy"
  assert reads == [6] and f"cached in {beside}" in line
  # Again: no record read. The whole split: only the other 6.
  assert "from the label cache" in load(0.5) and reads == [6]
  load(1.0)
  assert reads == [6, 6] and "from the label cache" in load(1.0) and reads == [6, 6]
  # A damaged cache is read around, and rewritten.
  beside.write_bytes(b"not an array")
  load(1.0)
  assert reads == [6, 6, 12] and "from the label cache" in load(1.0)
  # Data that cannot be written beside (here: a folder where the file would go): the
  # cache goes to the run's folder.
  beside.unlink()
  beside.mkdir()
  line = load(1.0, cache_dir=str(tmp_path / "run"))
  assert f"cached in {tmp_path / 'run' / 'label_cache' / 'tiny_jpegs-1.0.0-train.npy'}" in line
  assert "from the label cache" in load(1.0, cache_dir=str(tmp_path / "run"))
  assert "not cached (no writable folder)" in load(1.0) and reads == [6, 6, 12, 12, 12]
  # Records labelled -1 (STL-10's unlabelled split) are cached like any other.
  monkeypatch.setattr(records.TfdsRecords, "_read_labels", lambda self, pos, log=print:
                      reads.append(len(pos)) or np.full(len(pos), -1, np.int32))
  src = records.open_records("tfds:tiny_jpegs", "train", str(tmp_path / "data"))
  for _ in range(2):
    assert (src.labels(np.arange(12), cache_dir=str(tmp_path / "run2")) == -1).all()
  assert reads == [6, 6, 12, 12, 12, 12]


def test_streaming_refuses_tfrecord_data_and_missing_splits_in_one_line(tmp_path):
  from ssl_jax import records
  TinyJpegs(data_dir=str(tmp_path)).download_and_prepare()   # TFRecord, TFDS's default
  with pytest.raises(data_lib.DataError, match="stored as .*tfds convert_format"):
    records.open_records("tfds:tiny_jpegs", "train", str(tmp_path))
  with pytest.raises(data_lib.DataError, match="no split 'validation'.*'test', 'train'"):
    records.open_records("tfds:tiny_jpegs", "validation", str(tmp_path))
  with pytest.raises(data_lib.DataError, match="not prepared.*tfds build cifar10 --file_format"):
    records.open_records("tfds:cifar10", "train", str(tmp_path))


class ShapesJpegs(TinyJpegs):
  """128 training and 48 test JPEGs of varied sizes, the class in one colour channel."""
  SIZES = {"train": 128, "test": 48}

  def _generate_examples(self, n):
    rng = np.random.default_rng(n)
    for i in range(n):
      label = i % 3
      image = rng.integers(0, 96, (24 + 3 * (i % 11), 28 + 2 * (i % 5), 3), np.uint8)
      image[..., label] += 120
      yield i, {"image": image, "label": label}


@pytest.mark.slow
def test_a_streamed_array_record_run_killed_mid_run_ends_as_an_uninterrupted_one(tmp_path):
  """The issue's end-to-end check: a dataset the project has never seen, in ArrayRecord,
  varied image sizes, streamed with 2 workers and the window decoder; SIGKILL after a mid-epoch checkpoint and
  a rerun end with the summary and final state of an uninterrupted run (`-m slow`)."""
  import json, os, pathlib, signal, subprocess, sys, time
  import orbax.checkpoint as ocp
  ShapesJpegs(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")

  def command(workdir):
    return [sys.executable, "-m", "ssl_jax.main", "--config", "configs/quickstart.py",
            "--workdir", str(workdir), "--config.data.source=tfds:shapes_jpegs",
            f"--config.data.tfds_data_dir={tmp_path / 'tfds'}", "--config.data.stream=True",
            "--config.data.workers=2", "--config.data.fraction=1", "--config.data.test_fraction=1",
            "--config.data.decoder=simplejpeg",  # the window decoder: the device resizes
            "--config.model.name=resnet10", "--config.model.width=0.125", "--config.batch_size=32",
            "--config.bank.lr=1.6", "--config.num_epochs=3", "--config.eval.every_epochs=1",
            "--config.eval.linear_epochs=2", "--config.checkpoint_every_steps=5",
            "--config.log_every_steps=1"]

  whole = subprocess.run(command(tmp_path / "a"), capture_output=True, text=True, cwd=repo,
                         env=env, timeout=900)
  assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-3000:]
  proc = subprocess.Popen(command(tmp_path / "b"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, cwd=repo, env=env)
  marker = tmp_path / "b" / "checkpoints" / "5" / "commit_success.txt"
  deadline = time.time() + 600
  while not marker.exists():
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=600)
  rerun = subprocess.run(command(tmp_path / "b"), capture_output=True, text=True, cwd=repo,
                         env=env, timeout=900)
  assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
  assert "resuming from checkpoint at step 5" in rerun.stdout
  a, b = (json.load(open(tmp_path / w / "summary.json")) for w in "ab")
  assert a["input_pipeline"] == "stream" and a["num_train_examples"] == 128
  for key in ("knn_top1_init", "knn_top1", "knn_top1_embedding", "knn_top1_bank", "linear_top1"):
    assert a[key] == b[key], key
  restore = lambda w: ocp.StandardCheckpointer().restore(tmp_path / w / "checkpoints" / "12" /
                                                         "default")
  for x, y in zip(*(jax_leaves(restore(w)) for w in "ab")):
    np.testing.assert_array_equal(x, y)


def jax_leaves(tree):
  import jax
  return jax.tree_util.tree_leaves(tree)
