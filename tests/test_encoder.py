"""Using the trained encoder: load it from a workdir or an export, embed any folder,
look at neighbours; the features equal evaluation's."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import ssl_jax
from ssl_jax import neighbors
from tests.helpers import CIFAR10, needs_cifar10, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(module, *args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                        text=True, cwd=REPO, env=env, timeout=600)


def _ok(proc):
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  return proc.stdout


def _one_error_line(proc) -> str:
  lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("W")]
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny run trained for one epoch (real CIFAR-10 images), and its test split."""
  from ssl_jax import builders, train
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config()
  train.train_and_evaluate(config, str(workdir))
  _, test, _ = builders.load_data(config, log=lambda *a: None)
  return workdir, test


def _evaluation_features(workdir, split):
  """What `python -m ssl_jax.evaluate` embeds for the latest checkpoint."""
  import jax
  from ssl_jax import builders, checkpoint, data as data_lib, devices, evaluate, run_files, steps
  config = run_files.load_run_config(str(workdir))
  train, _, _ = builders.load_data(config, log=lambda *a: None)
  model = builders.build_model(config)
  _, tx = builders.build_optimizer(config, data_lib.steps_per_epoch(train.num_examples,
                                                                    config.batch_size))
  state = checkpoint.restore_latest(checkpoint.create_manager(str(workdir)),
                                    builders.initial_state(config, model, tx, train.num_examples))
  p_embed = evaluate.make_embed_fn(model, builders.augment_config(config))
  return evaluate.extract_features(p_embed, devices.replicate(steps.variables(state)), split,
                                   batch_size=64, num_devices=jax.local_device_count())


@pytest.mark.slow
@needs_cifar10
def test_load_encoder_embeds_what_evaluation_computes(run):
  workdir, test = run
  encoder = ssl_jax.load_encoder(str(workdir))
  assert set(encoder.variables) == {"params", "batch_stats"}  # no bank, no optimizer state
  assert encoder.step == 7 and encoder.image_size == 32
  h, z = encoder.embed(test.images, batch_size=48)
  eh, ez = _evaluation_features(workdir, test)
  np.testing.assert_array_equal(h, eh)
  np.testing.assert_array_equal(z, ez)
  # The pure apply_fn inside the user's own jit gives the same features.
  import jax
  jh, jz = jax.jit(encoder.apply_fn)(encoder.variables, test.images[:5])
  np.testing.assert_allclose(np.asarray(jz), z[:5], atol=1e-5)
  with pytest.raises(ssl_jax.EncoderError, match=r"no checkpoint at step 3 \(it has \[7\]\)"):
    ssl_jax.load_encoder(str(workdir), step=3)
  # A relative path works too (orbax itself takes absolute paths only).
  os.chdir(workdir.parent)
  try:
    assert ssl_jax.load_encoder(workdir.name).step == 7
  finally:
    os.chdir(REPO)


@pytest.mark.slow
@needs_cifar10
def test_export_then_load_equals_the_workdir(run, tmp_path):
  workdir, test = run
  out = _ok(_cli("ssl_jax.export", "--workdir", workdir, "--out", tmp_path / "m.msgpack"))
  assert f"wrote {tmp_path / 'm.msgpack'}: " in out and "the checkpoint, with bank" in out
  exported = ssl_jax.load_encoder(str(tmp_path / "m.msgpack"))
  h, z = exported.embed(test.images)
  wh, wz = ssl_jax.load_encoder(str(workdir)).embed(test.images)
  np.testing.assert_array_equal(h, wh)
  np.testing.assert_array_equal(z, wz)
  # An export of another format is refused with both formats named.
  import flax.serialization
  (tmp_path / "old.msgpack").write_bytes(flax.serialization.msgpack_serialize(
      {"format": "ssl_jax.encoder/0", "step": 1, "config": "{}", "variables": {}}))
  with pytest.raises(ssl_jax.EncoderError, match="format 'ssl_jax.encoder/0'; this version "
                                                 "of ssl_jax reads 'ssl_jax.encoder/1'"):
    ssl_jax.load_encoder(str(tmp_path / "old.msgpack"))


def _odd_images(root: pathlib.Path) -> dict:
  """A `<class>/<image>` tree of every awkward kind of image, a duplicate, a text file."""
  rng = np.random.default_rng(0)
  (root / "a").mkdir(parents=True)
  (root / "b").mkdir()
  rgb = rng.integers(0, 256, (40, 40, 3), np.uint8)
  Image.fromarray(rgb).save(root / "a" / "rgb.png")
  Image.fromarray(rgb).save(root / "b" / "copy_of_rgb.png")           # an exact duplicate
  Image.fromarray(rgb[..., 0]).save(root / "a" / "gray.png")
  Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(root / "a" / "rgba.png")
  pal = Image.fromarray(rgb).convert("P")
  pal.info["transparency"] = 0
  pal.save(root / "a" / "palette.png", transparency=0)
  Image.fromarray(rgb).convert("CMYK").save(root / "b" / "cmyk.jpg")
  Image.fromarray(np.full((30, 30), 32768, np.uint16)).save(root / "b" / "sixteen.png")
  Image.fromarray(rgb[:1, :1]).save(root / "b" / "tiny.png")
  Image.fromarray(rng.integers(0, 256, (3, 1000, 3), np.uint8)).save(root / "b" / "wide.bmp")
  sideways = np.zeros((20, 40, 3), np.uint8)
  sideways[:, :20, 0] = 255   # left half red
  sideways[:, 20:, 2] = 255   # right half blue
  exif = Image.Exif()
  exif[0x0112] = 6            # orientation: rotate 90 degrees clockwise to display
  Image.fromarray(sideways).save(root / "b" / "rotated.jpg", exif=exif, quality=95)
  (root / "notes.txt").write_text("not an image")
  return {"images": 10, "ignored": 1}


def test_preprocess_handles_orientation_depth_and_any_array(tmp_path):
  _odd_images(tmp_path)
  upright = ssl_jax.preprocess(Image.open(tmp_path / "b" / "rotated.jpg"), 8)
  assert upright.shape == (8, 8, 3) and upright.dtype == np.uint8
  assert upright[0, :, 0].mean() > 200 and upright[-1, :, 2].mean() > 200  # red top, blue bottom
  sixteen = ssl_jax.preprocess(Image.open(tmp_path / "b" / "sixteen.png"), 8)
  assert np.all(np.abs(sixteen.astype(int) - 128) <= 1)  # scaled, not clipped to 255
  assert ssl_jax.preprocess(np.full((5, 9), 0.5, np.float32), 4).max() == 128
  assert ssl_jax.preprocess(np.zeros((50, 20, 4), np.uint8), 16).shape == (16, 16, 3)
  with pytest.raises(ValueError, match=r"\[H, W\] or \[H, W, 3 or 4\]"):
    ssl_jax.preprocess(np.zeros((4, 4, 2), np.uint8), 4)


@pytest.mark.slow
@needs_cifar10
def test_embedding_a_folder_of_odd_images_then_neighbours(run, tmp_path):
  workdir, _ = run
  expected = _odd_images(tmp_path / "photos")
  out = _ok(_cli("ssl_jax.embed", "--workdir", workdir, "--images",
                 f"folder:{tmp_path / 'photos'}", "--out", tmp_path / "e.npz"))
  assert f"embedded {expected['images']} images" in out and "1 non-image files ignored" in out
  data = np.load(tmp_path / "e.npz")
  paths = list(data["paths"])
  assert len(paths) == expected["images"] and int(data["ignored"]) == 1
  assert list(data["class_names"]) == ["a", "b"]
  assert [int(l) for l in data["labels"]] == [int(p.startswith("b/")) for p in paths]
  assert data["h"].shape[0] == data["z"].shape[0] == len(paths)
  # An exact duplicate's nearest neighbour is its original, at similarity 1.
  [[j]], [[s]] = neighbors.nearest(data["h"], [paths.index("b/copy_of_rgb.png")], 1)
  assert paths[j] == "a/rgb.png" and s == pytest.approx(1.0, abs=1e-5)

  proc = _cli("ssl_jax.neighbors", "--embeddings", tmp_path / "e.npz", "--out",
              tmp_path / "grid.png", "--queries", 3, "--k", 4, "--cell", 32,
              "--duplicates", 0.9999)
  out = _ok(proc)
  assert Image.open(tmp_path / "grid.png").size == neighbors.grid_size(3, 4, 32)
  assert "leave-one-out kNN top-1" in out
  assert "a/rgb.png  b/copy_of_rgb.png" in out


@pytest.mark.slow
@needs_cifar10
def test_a_corrupt_image_stops_the_embedding_unless_skipped(run, tmp_path):
  workdir, _ = run
  photos = tmp_path / "photos"
  _odd_images(photos)
  (photos / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  args = ["--workdir", workdir, "--images", f"folder:{photos}", "--out", tmp_path / "e.npz"]
  line = _one_error_line(_cli("ssl_jax.embed", *args))
  assert str(photos / "a" / "broken.jpg") in line and "--skip_corrupt" in line
  assert not (tmp_path / "e.npz").exists()
  proc = _cli("ssl_jax.embed", *args, "--skip_corrupt")
  assert "1 skipped" in _ok(proc) and "warning: skipping" in proc.stderr
  assert list(np.load(tmp_path / "e.npz")["skipped"]) == ["a/broken.jpg"]


@pytest.mark.slow
@needs_cifar10
def test_bad_input_is_one_line(run, tmp_path):
  workdir, _ = run
  no_checkpoint = tmp_path / "fresh"
  no_checkpoint.mkdir()
  (no_checkpoint / "config.json").write_text((workdir / "config.json").read_text())
  line = _one_error_line(_cli("ssl_jax.export", "--workdir", no_checkpoint,
                              "--out", tmp_path / "m.msgpack"))
  assert "has no checkpoint yet" in line
  (tmp_path / "empty").mkdir()
  line = _one_error_line(_cli("ssl_jax.embed", "--workdir", workdir, "--images",
                              f"folder:{tmp_path / 'empty'}", "--out", tmp_path / "e.npz"))
  assert "no images under" in line
  line = _one_error_line(_cli("ssl_jax.embed", "--workdir", workdir, "--images",
                              f"folder:{tmp_path}", "--out", tmp_path / "no" / "e.npz"))
  assert line == f"error: --out {tmp_path / 'no' / 'e.npz'}: folder {tmp_path / 'no'} does not exist."
  line = _one_error_line(_cli("ssl_jax.neighbors", "--embeddings", tmp_path / "none.npz",
                              "--out", tmp_path / "g.png"))
  assert "no such file" in line
  for name, content in (("notes.txt", b"some text\n"), ("photo.jpg", b"\xff\xd8\xff\xe0JFIF")):
    (tmp_path / name).write_bytes(content)
    line = _one_error_line(_cli("ssl_jax.neighbors", "--embeddings", tmp_path / name,
                                "--out", tmp_path / "g.png"))
    assert line == (f"error: --embeddings {tmp_path / name} is not an .npz file; give the file "
                    "python -m ssl_jax.embed wrote.")


@pytest.mark.slow
@needs_cifar10
def test_the_readme_python_block_runs(run, tmp_path):
  """The README's five lines, on an export of the test run and a photo of any size."""
  workdir, _ = run
  readme = (REPO / "README.md").read_text()
  section = readme[readme.index("## Use the trained encoder"):]
  block = section[section.index("```python\n") + 10:]
  block = block[:block.index("```")]
  _ok(_cli("ssl_jax.export", "--workdir", workdir, "--out", tmp_path / "model.msgpack"))
  Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 200, 3), np.uint8)).save(
      tmp_path / "photo.jpg")
  block = (block.replace("runs/quickstart/model.msgpack", str(tmp_path / "model.msgpack"))
           .replace("photo.jpg", str(tmp_path / "photo.jpg")))
  scope = {}
  exec(block, scope)
  assert scope["image"].shape == (32, 32, 3) and scope["z"].shape == (1, 128)
  assert scope["h"].shape[0] == 1



def _library_features(enc, folder):
  """(h, labels) of every image under folder/<class>/, through the public encoder API."""
  classes = sorted(os.listdir(folder))
  files = [(i, os.path.join(folder, c, f)) for i, c in enumerate(classes)
           for f in sorted(os.listdir(os.path.join(folder, c)))]
  images = np.stack([enc.preprocess(Image.open(path)) for _, path in files])
  return enc.embed(images)[0], np.asarray([i for i, _ in files], np.int32)


@pytest.mark.slow
@needs_cifar10
def test_evaluating_on_another_dataset_is_the_library_on_its_images(run, tmp_path):
  """`--train_data/--test_data`: the numbers of load_encoder + embed + kNN / probe."""
  import json
  from ssl_jax import evaluate, train
  from tests.helpers import cifar10_folder
  workdir, _ = run
  root = cifar10_folder(tmp_path / "other", train_per_class=8, test_per_class=5)
  train_spec, test_spec = f"folder:{root}/train", f"folder:{root}/test"
  result = train.evaluate_on(str(workdir), train_spec, test_spec)
  enc = ssl_jax.load_encoder(workdir)
  (h_train, y_train), (h_test, y_test) = (_library_features(enc, f"{root}/{s}")
                                          for s in ("train", "test"))
  assert (result["num_train_examples"], result["num_test_examples"]) == (80, 50)
  e = enc.config.eval
  rows = evaluate.shard_rows(h_train, y_train)
  assert result["knn_top1"] == evaluate.knn_top1(rows, h_test, y_test, k=e.knn_k,
                                                 temperature=e.knn_temperature, num_classes=10)
  probe = evaluate.linear_probe(rows, h_test, y_test, num_classes=10, epochs=e.linear_epochs,
                                batch_size=e.linear_batch_size, lr=e.linear_lr,
                                weight_decay=e.linear_weight_decay)
  assert result["linear_top1"] == pytest.approx(probe, abs=1 / 50)
  # The command writes it under `datasets`, and the run's own evaluation keeps it.
  out = _ok(_cli("ssl_jax.evaluate", "--workdir", workdir, "--train_data", train_spec,
                 "--test_data", test_spec))
  assert f"on {test_spec} (fit on {train_spec}); written to {workdir}/eval.json" in out
  _ok(_cli("ssl_jax.evaluate", "--workdir", workdir))
  saved = json.load(open(workdir / "eval.json"))
  assert saved["datasets"][f"{train_spec} -> {test_spec}"]["knn_top1"] == result["knn_top1"]
  assert "knn_top1" in saved and saved["step"] == result["step"]


@pytest.mark.slow
@needs_cifar10
def test_another_dataset_that_cannot_be_used_is_one_line(run, tmp_path):
  import tarfile
  from ssl_jax import train
  from ssl_jax.evaluate import other_data
  from ssl_jax.sources import DataError
  from tests.helpers import cifar10_folder
  workdir, _ = run
  root = pathlib.Path(cifar10_folder(tmp_path / "c", train_per_class=2, test_per_class=2))
  flat = tmp_path / "flat"
  flat.mkdir()
  (flat / "a.jpg").write_bytes(b"x")
  with pytest.raises(DataError, match="has no class folders"):
    other_data.parse(f"folder:{flat}", "train")
  with pytest.raises(DataError, match="no folder or tar archive at"):
    other_data.parse(f"folder:{tmp_path / 'absent'}", "train")
  with pytest.raises(DataError, match="is 'folder:PATH' or 'tfds:NAME"):
    other_data.parse("imagenet", "train")
  assert other_data.parse("tfds:cifar100", "test") == ("tfds:cifar100", "test")
  assert other_data.parse("tfds:cifar100:train[:10%]", "test") == ("tfds:cifar100",
                                                                   "train[:10%]")
  # A tar of one folder of class folders; one of two folders is not.
  with tarfile.open(tmp_path / "t.tar", "w") as tar:
    tar.add(root / "train", arcname="pets")
  assert other_data.parse(f"folder:{tmp_path / 't.tar'}", "x") == (
      f"folder:{tmp_path / 't.tar'}", "pets")
  with tarfile.open(tmp_path / "two.tar", "w") as tar:
    tar.add(root, arcname="top-a")
    tar.add(root / "train", arcname="top-b")
  with pytest.raises(DataError, match="one top folder of class folders"):
    other_data.parse(f"folder:{tmp_path / 'two.tar'}", "x")
  # A test class the training side never saw.
  (root / "test" / "zebra").mkdir()
  (root / "test" / "zebra" / "z.jpg").write_bytes(
      next((root / "test" / "cat").iterdir()).read_bytes())
  with pytest.raises(DataError, match=r"test classes \['zebra'\] of folder:.* are not among"):
    train.evaluate_on(str(workdir), f"folder:{root}/train", f"folder:{root}/test")
  line = _one_error_line(_cli("ssl_jax.evaluate", "--workdir", workdir, "--test_data",
                              f"folder:{root}/test"))
  assert "--train_data and --test_data go together" in line


def test_test_classes_are_matched_to_the_training_classes_by_name():
  from ssl_jax import data as data_lib
  from ssl_jax.evaluate import other_data
  split = lambda labels, names: data_lib.Split(np.zeros((len(labels), 2, 2, 3), np.uint8),
                                               np.asarray(labels, np.int32), names)
  train = split([0, 1, 2, 3], ("bird", "cat", "deer", "dog"))
  test = other_data.match_classes(train, split([1, 0, 1], ("cat", "dog")), "a", "b")
  np.testing.assert_array_equal(test.labels, [3, 1, 3])
  assert test.class_names == train.class_names


def _fresh_state(config):
  from ssl_jax import builders, data as data_lib
  model = builders.build_model(config, bn_axis_name=None)
  _, tx = builders.build_optimizer(config, data_lib.steps_per_epoch(500, config.batch_size))
  return model, builders.initial_state(config, model, tx, 500)


@needs_cifar10
def test_init_from_starts_the_backbone_from_another_run_with_fresh_heads(run):
  """The new run's first forward pass gives load_encoder(W)'s features; its heads (and
  BYOL's target, rebuilt from the loaded encoder) are the fresh ones of its own seed."""
  import jax
  from ssl_jax import augment, builders, warm_start
  workdir, test = run
  source = ssl_jax.load_encoder(workdir)
  images = test.images[:24]
  want_h, _ = source.embed(images)
  for method in ("simclr", "byol"):
    config = tiny_config(method, init_from=str(workdir))
    model, fresh = _fresh_state(config)
    state = warm_start.warm_start(config, fresh, log=lambda *a: None)
    aug_cfg = builders.augment_config(config)
    h, _ = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                       augment.preprocess_eval(images, aug_cfg), train=False)
    np.testing.assert_allclose(np.asarray(h), want_h, rtol=1e-5, atol=1e-5)
    fresh_h, _ = model.apply({"params": fresh.params, "batch_stats": fresh.batch_stats},
                             augment.preprocess_eval(images, aug_cfg), train=False)
    assert np.abs(np.asarray(fresh_h) - want_h).max() > 1e-2  # the graft changed something
    heads = [k for k in state.params if k != warm_start.BACKBONE]
    assert heads
    for k in heads:
      for a, b in zip(jax.tree_util.tree_leaves(state.params[k]),
                      jax.tree_util.tree_leaves(fresh.params[k])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if method == "byol":
      for a, b in zip(jax.tree_util.tree_leaves(state.extra["params"]),
                      jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@needs_cifar10
def test_init_from_a_mismatched_backbone_or_no_source_is_one_line(run, tmp_path):
  from ssl_jax import warm_start
  from ssl_jax.run_config import ConfigError
  workdir, _ = run
  config = tiny_config(init_from=str(workdir), **{"model.width": 0.25})
  with pytest.raises(ConfigError, match=r"holds a resnet10 \(width 0.125, 32 px\) backbone; "
                      r"this run builds a resnet10 \(width 0.25, 32 px\) one"):
    warm_start.warm_start(config, _fresh_state(config)[1])
  missing = tiny_config(init_from=str(tmp_path / "nothing"))
  with pytest.raises(ConfigError, match="no training workdir or export there"):
    warm_start.check_source(missing, str(tmp_path / "run"))
  with pytest.raises(ConfigError, match="this run's own workdir"):
    warm_start.check_source(tiny_config(init_from=str(workdir)), str(workdir))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ConfigError, match=f"config.init_from={empty}: "):
    warm_start.warm_start(tiny_config(init_from=str(empty)),
                          _fresh_state(tiny_config())[1])
  line = _one_error_line(_cli("ssl_jax.main", "--config", "configs/quickstart.py", "--workdir",
                              tmp_path / "w2", f"--config.init_from={workdir}",
                              "--config.model.width=0.5", "--config.data.fraction=0.01",
                              f"--config.data.source=folder:{CIFAR10}"))
  assert "backbone" in line and "width 0.125" in line and "width 0.5" in line


def test_every_methods_checkpoint_structure_is_what_load_encoder_expects():
  """load_encoder checks a checkpoint against the model its config builds: for every
  method (BYOL's predictor included) that is what training saves."""
  from ssl_jax import builders, checkpoint, data as data_lib, encoder, methods
  for method in methods.names():
    config = tiny_config(method)
    model = builders.build_model(config, bn_axis_name=None)
    _, tx = builders.build_optimizer(config, data_lib.steps_per_epoch(500, config.batch_size))
    state = builders.abstract_state(config, model, tx, 500)   # shapes only: nothing runs
    saved = checkpoint.leaf_specs({"params": state.params, "batch_stats": state.batch_stats})
    assert checkpoint.structure_difference(saved, encoder._expected_specs(config)) is None, method
