"""The streaming input's decoders (ssl_jax/decoders.py): the "simplejpeg" window decoder
against the "pillow" host crop it replaces.

Checked: the same crop box for either decoder (the window is the box, scaled by
the DCT factor used); the device-resized view within a stated bound of Pillow's
(mean absolute difference, measured by benchmarks/stream_input.py); images
simplejpeg does not take go through Pillow; a damaged record named or replaced;
the same batches for any worker count; the step resizes the windows it is given.
"""

import io

import numpy as np
import pytest
from PIL import Image

from configs import default
from ssl_jax import augment, decoders, stream
from ssl_jax.sources import DataError
from tests.helpers import cifar10_folder, needs_cifar10

pytest.importorskip("simplejpeg")
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
# Mean absolute difference (0-255 levels) from the pillow decoder's view: the benchmark
# measured 0.19 at 224 px and 1.53 at 64 px over its 200 images (benchmarks/README.md);
# at 64 px Pillow's draft mode decodes many crops at a DCT scale the window decoder
# does not use.
BOUND = {224: 0.5, 64: 2.5}


def _jpeg(image, **save) -> bytes:
  buf = io.BytesIO()
  image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
  image.save(buf, save.pop("format", "JPEG"), **save)
  return buf.getvalue()


def _photos(n: int, size=(500, 375)) -> list[bytes]:
  """Smooth random fields of ImageNet's typical size, as the benchmark writes."""
  rng = np.random.default_rng(0)
  small = lambda: rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), np.uint8)
  return [_jpeg(np.asarray(Image.fromarray(small()).resize(size, Image.BICUBIC)), quality=90)
            for _ in range(n)]


def _views(datas, size):
  rng = lambda i: np.random.default_rng([0, 1, i, 0])
  pillow = np.stack([decoders.decode_crop(d, str(i), size, rng(i), SCALE, RATIO)
                     for i, d in enumerate(datas)])
  windows = [decoders.decode_window(d, str(i), size, rng(i), SCALE, RATIO)
             for i, d in enumerate(datas)]
  canvas, box = np.stack([w[0] for w in windows]), np.stack([w[1] for w in windows])
  return pillow, canvas, box, np.asarray(augment.resize_windows(canvas, box, size))


@pytest.mark.parametrize("size", [64, 224])
def test_the_window_is_the_crop_box_and_the_view_is_pillows_within_the_bound(size):
  datas = _photos(24)
  pillow, canvas, box, device = _views(datas, size)
  assert canvas.shape == (24, 2 * size, 2 * size, 3) and box.dtype == np.float32
  reduced = 0
  for i, b in enumerate(box):
    left, top, cw, ch = decoders.crop_box(np.random.default_rng([0, 1, i, 0]), 500, 375,
                                          SCALE, RATIO)
    s = b[3] / cw   # the DCT scale m / 8 the window was decoded at
    assert s * 8 == pytest.approx(round(s * 8)) and 1 <= round(s * 8) <= 8
    assert b[2] == pytest.approx(ch * s)
    assert b[0] + b[2] <= 2 * size and b[1] + b[3] <= 2 * size   # inside the canvas
    reduced += s < 1
    # Only a window too large for the canvas is decoded reduced.
    assert (s < 1) == (max(cw, ch) + 2 * decoders._margin(max(cw, ch), size) + 2 > 2 * size)
  assert reduced > 0 if size == 64 else True
  # Two views of one image share its decode, and come out as decoded apart.
  decoded: dict = {}
  for view in (0, 1):
    key = lambda: np.random.default_rng([0, 1, 5, view])
    shared = decoders.decode_window(datas[5], "x", size, key(), SCALE, RATIO, decoded=decoded)
    alone = decoders.decode_window(datas[5], "x", size, key(), SCALE, RATIO)
    for a, b in zip(shared, alone):
      np.testing.assert_array_equal(a, b)
  assert 1 <= len(decoded) <= 2
  diff = np.abs(pillow.astype(int) - device).mean()
  assert diff < BOUND[size], diff
  assert np.abs(pillow.astype(int) - device).mean(axis=(1, 2, 3)).max() < 3 * BOUND[size]


def test_what_simplejpeg_does_not_take_goes_through_pillow():
  rng = np.random.default_rng(1)
  image = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).resize(
      (160, 120), Image.BICUBIC))
  exif = Image.Exif()
  exif[0x0112] = 6   # stored sideways
  inputs = {"png": _jpeg(image, format="PNG"), "cmyk": _jpeg(Image.fromarray(image).convert("CMYK"),
                                                           quality=95), "rotated": _jpeg(image, exif=exif.tobytes())}
  for name, data in inputs.items():
    key = lambda: np.random.default_rng([0, 0, 7, 0])
    canvas, box = decoders.decode_window(data, name, 32, key(), SCALE, RATIO)
    np.testing.assert_array_equal(box, [0, 0, 32, 32])
    np.testing.assert_array_equal(canvas[:32, :32], decoders.decode_crop(data, name, 32, key(),
                                                                         SCALE, RATIO))
    np.testing.assert_array_equal(augment.resize_windows(canvas, box, 32), canvas[:32, :32])
  # An upright JPEG with EXIF (a camera's) stays on the fast path.
  exif[0x0112] = 1
  _, box = decoders.decode_window(_jpeg(image, exif=exif.tobytes()), "x", 32,
                                  np.random.default_rng(0), SCALE, RATIO)
  assert box[2] != 32 or box[3] != 32


def test_a_damaged_jpeg_is_named_as_the_pillow_decoder_names_it():
  data = _photos(1)[0][:300]
  for decode in (decoders.decode_crop, decoders.decode_window):
    with pytest.raises(DataError, match="cannot decode image broken.jpg"):
      decode(data, "broken.jpg", 32, np.random.default_rng(0), SCALE, RATIO)


def test_an_unknown_or_missing_decoder_is_one_line(monkeypatch):
  assert decoders.check_available("simplejpeg") is None
  assert "must be one of pillow, simplejpeg, got 'turbo'" in decoders.check_available("turbo")
  monkeypatch.setitem(__import__("sys").modules, "simplejpeg", None)
  assert "pip install 'ssl_jax[stream]'" in decoders.check_available("simplejpeg")


@needs_cifar10
def test_streamed_windows_are_the_same_for_any_worker_count_and_resume(tmp_path):
  folder = cifar10_folder(tmp_path, train_per_class=6, test_per_class=1)
  cfg = default.get_config().data
  cfg.unlock()
  cfg.update(dict(source=f"folder:{folder}", stream=True, cache_dir="", decoder="simplejpeg"))
  split = stream.load_split(cfg, "train", fraction=1.0, seed=0)

  def epoch(workers, start_step=0, views=2):
    split.images.workers = workers
    return list(stream.TrainStream(split, global_batch=20, num_local_devices=2, seed=3, epoch=1,
                                   start_step=start_step, views=views, scale=(0.2, 1.0),
                                   ratio=RATIO, decoder="simplejpeg"))
  serial, pooled, resumed = epoch(0), epoch(2), epoch(2, start_step=1)
  assert len(serial) == 3
  first = serial[0]
  assert first["image"].shape == (2, 10, 2, 64, 64, 3) and first["box"].shape == (2, 10, 2, 4)
  for k, b in enumerate(serial):
    for key in ("image", "box", "index"):
      np.testing.assert_array_equal(pooled[k][key], b[key])
      if k:
        np.testing.assert_array_equal(resumed[k - 1][key], b[key])
  (one, *_) = epoch(0, views=1)
  assert one["image"].shape == (2, 10, 64, 64, 3) and one["box"].shape == (2, 10, 4)


@needs_cifar10
def test_the_step_resizes_the_windows_it_is_given():
  import jax
  from ssl_jax import builders
  from tests.helpers import setup_training, tiny_config
  config = tiny_config(**{"data.stream": False})
  _, model, tx, state = setup_training(config)
  from ssl_jax import devices
  one = jax.local_devices()[:1]
  step = jax.pmap(builders.make_train_step(config, model, tx, total_steps=10),
                  axis_name=devices.AXIS, devices=one)
  state = devices.replicate(state, one)
  rng = np.random.default_rng(0)
  canvas = rng.integers(0, 256, (1, 8, 64, 64, 3), np.uint8)
  box = np.asarray([[[1.5, 2.0, 40.0, 30.0]] * 8], np.float32)
  index = np.arange(8, dtype=np.int32)[None]
  resized = np.asarray(augment.resize_windows(canvas, box, 32))
  assert resized.shape == (1, 8, 32, 32, 3)
  a, ma = step(state, {"image": canvas, "box": box, "index": index})
  b, mb = step(state, {"image": resized, "index": index})
  # The same step up to rounding: compiled into the step, the resize's sums run in
  # another order, and a pixel at a rounding edge may come out one level apart.
  close = lambda x, y: all(np.allclose(u, v, rtol=1e-3, atol=1e-5) for u, v in zip(
      jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y)))
  assert close((a.params, ma), (b.params, mb))
  c, mc = step(state, {"image": canvas[:, ::-1], "box": box, "index": index})  # other pixels
  assert not close((c.params, mc), (a.params, ma))


def test_a_resume_that_decodes_otherwise_says_so_in_one_line(tmp_path):
  from ssl_jax import run_files
  config = default.get_config()
  config.data.stream, config.data.decoder = True, "pillow"
  run_files.write_run_info(str(tmp_path), config, 100)
  lines = []
  run_files.check_resumable(str(tmp_path), config, 100, lines.append)
  assert lines == []
  config.data.decoder = "simplejpeg"
  run_files.check_resumable(str(tmp_path), config, 100, lines.append)
  assert len(lines) == 1 and "\n" not in lines[0]
  assert lines[0].startswith("note: this run last decoded its stream with pillow ")
