"""Sources, instance indices, subsets and batching."""

import os
import pathlib
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from ssl_jax import data as data_lib
from tests.helpers import CIFAR10, needs_cifar10


def _cfg(source, **kw):
  return ml_collections.ConfigDict(dict(source=source, image_size=8, cache_dir="",
                                        skip_corrupt=False, **kw))


def _make_tree(root: pathlib.Path):
  """A tiny split with mixed modes and sizes: RGB, grayscale, RGBA, non-square."""
  rng = np.random.default_rng(0)
  (root / "train" / "cat").mkdir(parents=True)
  (root / "train" / "dog").mkdir(parents=True)
  Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "train/cat/a.png")
  Image.fromarray(rng.integers(0, 255, (20, 12), dtype=np.uint8), "L").save(root / "train/cat/b.jpg")
  Image.fromarray(rng.integers(0, 255, (8, 8, 4), dtype=np.uint8), "RGBA").save(root / "train/dog/c.png")
  Image.fromarray(rng.integers(0, 255, (5, 30, 3), dtype=np.uint8)).save(root / "train/dog/d.png")


def test_folder_tree_and_tar_give_the_same_split(tmp_path):
  _make_tree(tmp_path / "tree")
  split, skipped = data_lib.load_split(_cfg(f"folder:{tmp_path / 'tree'}"), "train")
  assert skipped == 0
  assert split.images.shape == (4, 8, 8, 3) and split.images.dtype == np.uint8
  assert split.class_names == ("cat", "dog")
  np.testing.assert_array_equal(split.labels, [0, 0, 1, 1])
  archive = tmp_path / "tree.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(tmp_path / "tree", arcname="top")  # the tree may sit under a top folder
  from_tar, _ = data_lib.load_split(_cfg(f"folder:{archive}"), "train")
  np.testing.assert_array_equal(from_tar.images, split.images)
  np.testing.assert_array_equal(from_tar.labels, split.labels)


def test_bad_folders_name_the_culprit(tmp_path):
  _make_tree(tmp_path)
  (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not an image")
  with pytest.raises(data_lib.DataError, match="broken.jpg"):
    data_lib.load_split(_cfg(f"folder:{tmp_path}"), "train")
  cfg = _cfg(f"folder:{tmp_path}")
  cfg.skip_corrupt = True
  split, skipped = data_lib.load_split(cfg, "train", log=lambda *a: None)
  assert skipped == 1 and len(split) == 4
  (tmp_path / "train" / "empty").mkdir()
  with pytest.raises(data_lib.DataError, match="empty"):
    data_lib.load_split(cfg, "train")
  with pytest.raises(data_lib.DataError, match="split folder .*test.* not found"):
    data_lib.load_split(cfg, "test")
  (tmp_path / "val").mkdir()  # a split folder without any class folder
  with pytest.raises(data_lib.DataError, match="split 'val' in .* has no images"):
    data_lib.load_split(cfg, "val")
  with pytest.raises(ValueError, match="config.data.source must be"):
    data_lib.load_split(_cfg("cifar10"), "train")


def test_subset_is_fixed_and_seeded():
  split = data_lib.Split(np.zeros((100, 2, 2, 3), np.uint8), np.arange(100, dtype=np.int32), ())
  a, b = data_lib.subset(split, 0.25, 3), data_lib.subset(split, 0.25, 3)
  assert len(a) == 25
  np.testing.assert_array_equal(a.labels, b.labels)
  assert np.all(np.diff(a.source_index) > 0)
  assert not np.array_equal(a.source_index, data_lib.subset(split, 0.25, 4).source_index)
  with pytest.raises(ValueError, match="fraction"):
    data_lib.subset(split, 1.5, 0)


def _numbered(n, layout=None):
  """A split whose image pixels and labels name their global instance index."""
  lo, hi = layout.local_bounds if layout else (0, n)
  ids = np.arange(lo, hi)
  return data_lib.Split((ids % 256).astype(np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8),
                        ids.astype(np.int32), (), layout=layout)


def test_global_batches_depend_on_shards_not_on_devices_or_processes():
  n = 103
  kw = dict(global_batch=16, seed=5, epoch=2)
  one = list(data_lib.train_batches(_numbered(n), num_local_devices=1, **kw))
  four = list(data_lib.train_batches(_numbered(n), num_local_devices=4, **kw))
  assert len(one) == n // 16
  for s in range(len(one)):
    np.testing.assert_array_equal(four[s]["index"].ravel(), one[s]["index"].ravel())
    assert four[s]["image"].shape == (4, 4, 2, 2, 3)
    # The image and label of each example are the ones its index names.
    np.testing.assert_array_equal(four[s]["image"][..., 0, 0, 0], four[s]["index"])
    np.testing.assert_array_equal(four[s]["label"], four[s]["index"])
  epoch_ids = np.concatenate([b["index"].ravel() for b in one])
  assert len(set(epoch_ids)) == len(epoch_ids)  # no repeats inside an epoch
  resumed = list(data_lib.train_batches(_numbered(n), num_local_devices=1, start_step=3, **kw))
  np.testing.assert_array_equal(resumed[0]["index"], one[3]["index"])
  other_epoch = next(data_lib.train_batches(_numbered(n), num_local_devices=1, global_batch=16,
                                            seed=5, epoch=3))
  assert not np.array_equal(other_epoch["index"], one[0]["index"])

  # Two shards: one process holding both sees what two processes see together,
  # and each process's batches come from its own rows only.
  both = list(data_lib.train_batches(_numbered(n, data_lib.Layout(n, 2)), num_local_devices=4,
                                     **kw))
  procs = [list(data_lib.train_batches(_numbered(n, data_lib.Layout(n, 2, p, 2)),
                                       num_local_devices=2, **kw)) for p in range(2)]
  assert len(both) == len(procs[0]) == len(procs[1]) == (n // 2) // 8
  for s in range(len(both)):
    joined = np.concatenate([procs[0][s]["index"], procs[1][s]["index"]])
    np.testing.assert_array_equal(joined, both[s]["index"])
    assert procs[0][s]["index"].max() < 51 <= procs[1][s]["index"].min()
    np.testing.assert_array_equal(procs[1][s]["label"], procs[1][s]["index"])
  # Shard 0 keeps the unsharded stream; the order does depend on the shard count.
  assert not np.array_equal(both[0]["index"].ravel(), one[0]["index"].ravel())


@pytest.mark.parametrize("n,shards,procs,devices", [(10, 1, 1, 2), (10, 2, 2, 1), (37, 2, 1, 4),
                                                     (37, 4, 2, 2), (5, 1, 1, 4)])
def test_eval_batches_cover_the_split_once_with_equal_counts(n, shards, procs, devices):
  seen, counts = [], set()
  for p in range(procs):
    split = _numbered(n, data_lib.Layout(n, shards, p, procs))
    batches = list(data_lib.eval_batches(split, batch_size=4, num_local_devices=devices))
    counts.add(len(batches))
    assert data_lib.num_eval_batches(split, batch_size=4, num_local_devices=devices) == len(
        batches)
    for b in batches:
      assert b["image"].shape[:1] == (devices,)
      np.testing.assert_array_equal(b["label"], b["index"])
      seen += b["index"].ravel()[b["mask"].ravel()].tolist()
  assert len(counts) == 1  # every process runs the same number of (collective) steps
  assert sorted(seen) == list(range(n))


def test_layout_rejects_bad_shard_counts():
  with pytest.raises(ValueError, match="multiple of the process count"):
    data_lib.Layout(100, 3, 0, 2)
  with pytest.raises(data_lib.DataError, match="cannot be cut into 4 shards"):
    data_lib.Layout(3, 4)


def test_a_process_decodes_only_its_share(tmp_path):
  _make_tree(tmp_path)
  cfg = _cfg(f"folder:{tmp_path}")
  whole, _ = data_lib.load_split(cfg, "train")
  for p in range(2):
    part, _ = data_lib.load_shard(cfg, "train", fraction=1.0, seed=0, num_shards=2,
                                  process_index=p, process_count=2, log=lambda *a: None)
    assert len(part) == 2 and part.num_examples == 4 and part.offset == 2 * p
    np.testing.assert_array_equal(part.images, whole.images[2 * p:2 * p + 2])
    np.testing.assert_array_equal(part.labels, whole.labels[2 * p:2 * p + 2])
  # A broken file in the other process's share is never opened.
  (tmp_path / "train" / "dog" / "e.png").write_bytes(b"not an image")
  part, _ = data_lib.load_shard(cfg, "train", fraction=1.0, seed=0, num_shards=2,
                                process_index=0, process_count=2, log=lambda *a: None)
  assert part.num_examples == 5 and len(part) == 2
  with pytest.raises(data_lib.DataError, match="e.png"):
    data_lib.load_shard(cfg, "train", fraction=1.0, seed=0, num_shards=2, process_index=1,
                        process_count=2, log=lambda *a: None)
  # A subset is the same seeded subset whichever way it is split.
  (tmp_path / "train" / "dog" / "e.png").unlink()
  sub = data_lib.subset(whole, 0.5, 3)
  parts = [data_lib.load_shard(cfg, "train", fraction=0.5, seed=3, num_shards=2,
                               process_index=p, process_count=2, log=lambda *a: None)[0]
           for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([q.source_index for q in parts]),
                                sub.source_index)
  np.testing.assert_array_equal(np.concatenate([q.images for q in parts]), sub.images)


@needs_cifar10
def test_cifar10_archive_has_the_documented_layout(tmp_path):
  cfg = _cfg(f"folder:{CIFAR10}")
  cfg.image_size = 32
  cfg.cache_dir = str(tmp_path)
  test, _ = data_lib.load_split(cfg, "test", log=lambda *a: None)
  assert test.images.shape == (10000, 32, 32, 3)
  assert np.bincount(test.labels).tolist() == [1000] * 10
  assert test.class_names[0] == "airplane" and test.class_names[-1] == "truck"
  cached, _ = data_lib.load_split(cfg, "test", log=lambda *a: None)
  assert len(os.listdir(tmp_path)) == 1
  np.testing.assert_array_equal(cached.images, test.images)
