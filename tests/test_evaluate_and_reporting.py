"""kNN against a NumPy reference, the linear probe, and the run's log files."""

import json

import numpy as np
import optax
import pytest

from ssl_jax import augment, evaluate
from ssl_jax import reporting


def _knn_reference(train, train_y, test, k, t, c):
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sim = unit(test).astype(np.float64) @ unit(train).astype(np.float64).T
  preds = []
  for row in sim:
    top = np.argsort(-row)[:k]
    votes = np.zeros(c)
    np.add.at(votes, train_y[top], np.exp(row[top] / t))
    preds.append(np.argmax(votes))
  return np.asarray(preds)


def test_knn_matches_numpy_reference():
  rng = np.random.default_rng(0)
  train, test = rng.normal(size=(300, 16)), rng.normal(size=(70, 16))
  train_y = rng.integers(0, 5, 300)
  test_y = rng.integers(0, 5, 70)
  for k in (1, 20, 200):
    expected = np.mean(_knn_reference(train, train_y, test, k, 0.1, 5) == test_y)
    got = evaluate.knn_top1(evaluate.shard_rows(train, train_y), test, test_y, k=k,
                            temperature=0.1, batch_size=32, num_classes=5)
    assert got == pytest.approx(expected)


def test_knn_and_linear_probe_separate_clustered_features(monkeypatch, capsys):
  rng = np.random.default_rng(1)
  centers = rng.normal(size=(4, 32)) * 3
  y = rng.integers(0, 4, 600)
  x = centers[y] + rng.normal(size=(600, 32))
  train = evaluate.shard_rows(x[:400], y[:400])
  knn = evaluate.knn_top1(train, x[400:], y[400:], k=20)
  lin = evaluate.linear_probe(train, x[400:], y[400:], num_classes=4, epochs=20, lr=1e-2)
  # show the bar however short the run
  monkeypatch.setattr(evaluate.features, "PROGRESS_DELAY", 0.0)
  noise = evaluate.linear_probe(evaluate.shard_rows(rng.normal(size=(400, 32)), y[:400]),
                                rng.normal(size=(200, 32)), y[400:], num_classes=4, epochs=20,
                                lr=1e-2, desc="probe")
  assert knn > 0.9 and lin > 0.9 and noise < 0.5
  err = capsys.readouterr().err
  assert "probe [" in err and "20/20" in err, err


def test_metric_writer_writes_jsonl_and_tensorboard_events(tmp_path):
  writer = reporting.MetricWriter(str(tmp_path))
  writer.write(3, {"loss": 1.5, "lr": 0.1}, epoch=1)
  writer.write(6, {"loss": 1.25}, epoch=2)
  writer.close()
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert records == [{"step": 3, "epoch": 1, "loss": 1.5, "lr": 0.1},
                     {"step": 6, "epoch": 2, "loss": 1.25}]
  tf = pytest.importorskip("tensorflow")
  (event_file,) = (tmp_path / "tensorboard").iterdir()
  scalars = []
  for e in tf.compat.v1.train.summary_iterator(str(event_file)):  # also checks the CRCs
    for v in e.summary.value:
      scalars.append((e.step, v.tag, v.simple_value))
  assert scalars == [(3, "loss", 1.5), (3, "lr", pytest.approx(0.1)), (6, "loss", 1.25)]


def test_progress_prints_rate_and_eta(capsys):
  import sys
  p = reporting.Progress(10, "epoch 1/2", images_per_step=32, stream=sys.stdout)
  for i in range(1, 11):
    p.update(i, {"loss": 2.0})
  out = capsys.readouterr().out
  assert "10/10" in out and "img/s" in out and "eta" in out and "loss 2" in out


def test_progress_with_a_delay_stays_silent_until_the_delay_has_passed(capsys):
  import sys
  p = reporting.Progress(10, "embedding", images_per_step=32, stream=sys.stdout, delay=60.0)
  for i in range(1, 11):
    p.update(i)
  assert capsys.readouterr().out == ""  # ended within the delay: no lines at all
  p = reporting.Progress(10, "embedding", images_per_step=32, stream=sys.stdout, delay=60.0)
  p.update(1)
  p.start -= 61.0  # a minute later
  for i in range(2, 11):
    p.update(i)
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("embedding [") and " 2/10 " in lines[0]
  assert "10/10" in lines[-1]


def test_extract_features_returns_every_row_in_order_and_shows_progress_on_long_passes(
    monkeypatch, capsys):
  import jax
  from ssl_jax import data as data_lib
  n = 37  # not a multiple of the batch: the last batch is padded
  ids = np.arange(n)
  split = data_lib.Split(ids.astype(np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8),
                         ids.astype(np.int32), ())
  # "Features" that spell the instance: h = pixel value, z = 2 * pixel value.
  p_embed = jax.pmap(lambda v, x, mask: (x[:, 0, 0, :1].astype(np.float32),
                                         2 * x[:, 0, 0, :1].astype(np.float32)))
  h, z = evaluate.extract_features(p_embed, None, split, batch_size=8, num_devices=4,
                                   desc="embedding the test split")
  np.testing.assert_array_equal(h[:, 0], ids)
  np.testing.assert_array_equal(z[:, 0], 2 * ids)
  assert capsys.readouterr().err == ""  # a short pass: no progress lines
  monkeypatch.setattr(evaluate.features, "PROGRESS_DELAY", 0.0)
  evaluate.extract_features(p_embed, None, split, batch_size=8, num_devices=4,
                            desc="embedding the test split")
  err = capsys.readouterr().err
  assert "embedding the test split [" in err and "5/5" in err, err


def test_calibration_with_batch_norm_in_batch_mode_ignores_the_padding():
  """The calibrated rows of one batch are those of flax's BatchNorm over exactly its
  real rows, whatever pads it: 2 or 6 padded slots over 4 devices, or none on 1."""
  import jax
  from ssl_jax import builders, data as data_lib, devices, steps
  from tests.helpers import tiny_config
  config = tiny_config(**{"model.width": 0.0625})
  model = builders.build_model(config)
  state = builders.initial_state(config, model, optax.sgd(0.1), 10)
  variables = steps.variables(state)
  images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), np.uint8)
  split = data_lib.Split(images, np.zeros(10, np.int32), ())

  # flax's own BatchNorm in batch mode over the 10 real rows, one device, no padding.
  x = augment.preprocess_eval(images, builders.augment_config(config))
  (_, expected), _ = builders.build_model(config, bn_axis_name=None).apply(
      variables, x, train=True, mutable=["batch_stats"])

  p_embed = evaluate.make_embed_fn(model, builders.augment_config(config), batch_norm="batch")
  for batch_size, num_devices in ((12, 4), (16, 4), (10, 1)):
    _, z = evaluate.extract_features(
        p_embed, devices.replicate(variables, jax.local_devices()[:num_devices]), split,
        batch_size=batch_size, num_devices=num_devices)
    np.testing.assert_allclose(z, expected, atol=2e-5, err_msg=f"batch {batch_size}")
  # The same with flax's mask-free statistics would see the padding (the
  # repeated first image) and move every row: the check above can fail.
  plain = jax.pmap(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0][1],
                   axis_name=devices.AXIS)
  batch = next(data_lib.eval_batches(split, batch_size=16, num_local_devices=4))
  z = plain(devices.replicate(variables), augment.preprocess_eval(batch["image"],
                                                                   builders.augment_config(config)))
  assert not np.allclose(np.asarray(z).reshape(16, -1)[batch["mask"].reshape(-1)], expected,
                         atol=1e-3)
