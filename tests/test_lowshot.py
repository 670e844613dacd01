"""Few-label evaluation: class-balanced, seeded, nested subsets, and kNN / probe fit on them.

The two-process version of `evaluate_lowshot` is checked against the one-process
one in tests/test_sharded_evaluation.py (its worker holds only its own rows).
"""

import json

import ml_collections
import numpy as np
import pytest

from ssl_jax import evaluate, run_config
from ssl_jax.evaluate import lowshot
from tests.helpers import needs_cifar10, tiny_config

# Few-label settings of the tests: 2% of the labels (5 per class of blobs' 1001
# rows, 4 classes) and 1 and 3 per class, two seeds; a short probe.
LOWSHOT = ml_collections.ConfigDict({
    "label_fractions": (0.02,), "shots_per_class": (1, 3), "lowshot_seeds": 2,
    "knn_k": 200, "knn_temperature": 0.1, "linear_epochs": 20, "linear_batch_size": 64,
    "linear_lr": 1e-2, "linear_weight_decay": 0.0, "feature_dtype": "float32"})


def _labels():
  # Unbalanced classes: 0 has 50 rows, 1 has 7, 2 has 120, 5 has 3 (classes need not be 0..C-1).
  return np.random.default_rng(0).permutation(np.repeat([0, 1, 2, 5], [50, 7, 120, 3]))


def test_subsets_are_class_balanced_seeded_and_nested():
  labels = _labels()
  sub = evaluate.balanced_subset(labels, 5, seed=0)
  assert np.all(np.diff(sub) > 0)
  assert {c: int(np.sum(labels[sub] == c)) for c in (0, 1, 2, 5)} == {0: 5, 1: 5, 2: 5, 5: 3}
  np.testing.assert_array_equal(sub, evaluate.balanced_subset(labels, 5, seed=0))
  assert not np.array_equal(sub, evaluate.balanced_subset(labels, 5, seed=1))
  for seed in range(3):   # one seed's subsets grow by adding rows
    small, large = (set(evaluate.balanced_subset(labels, n, seed)) for n in (1, 20))
    assert small < large and small < set(evaluate.balanced_subset(labels, 5, seed))
  with pytest.raises(ValueError, match="per_class must be >= 1"):
    evaluate.balanced_subset(labels, 0, seed=0)


def test_a_label_fraction_trains_on_the_subset_the_evaluation_draws_for_that_seed():
  """config.data.label_fraction: class-balanced, seeded, nested, and the few-label
  setting's own subset for the same fraction and seed."""
  from ssl_jax import data as data_lib
  labels = np.repeat(np.arange(10), 100)[np.random.default_rng(3).permutation(1000)]
  images = np.arange(1000, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  split = data_lib.Split(images, labels.astype(np.int32), tuple("abcdefghij"),
                         np.arange(1000) + 7)  # rows 7.. of some larger split
  assert data_lib.label_subset(split, 1.0, seed=0) is split
  eval_cfg = ml_collections.ConfigDict({"label_fractions": (0.1,), "shots_per_class": ()})
  (name, per_class), = lowshot.settings(eval_cfg, labels)
  for seed in (0, 1):
    sub = data_lib.label_subset(split, 0.1, seed)
    want = evaluate.balanced_subset(labels, per_class, seed)
    assert name == "labels_10%" and len(sub) == sub.num_examples == 100 == len(want)
    np.testing.assert_array_equal(sub.labels, labels[want])
    np.testing.assert_array_equal(sub.images, images[want])
    np.testing.assert_array_equal(sub.source_index, want + 7)
    assert np.all(np.bincount(sub.labels) == 10)
    assert set(data_lib.label_subset(split, 0.03, seed).source_index) < set(sub.source_index)
  assert not np.array_equal(data_lib.label_subset(split, 0.1, 0).source_index,
                            data_lib.label_subset(split, 0.1, 1).source_index)


def test_a_label_fraction_outside_the_in_memory_single_process_input_is_refused():
  for overrides, match in [({"data.label_fraction": 0.0}, r"label_fraction must be in \(0, 1\]"),
                           ({"data.label_fraction": 0.1, "data.stream": True},
                            "needs the in-memory input")]:
    with pytest.raises(run_config.ConfigError, match=match):
      run_config.validate_config(tiny_config(**overrides), 1)


def test_settings_name_fractions_and_shots_and_round_a_fraction_per_class():
  labels = np.repeat(np.arange(10), 500)   # 5,000 rows, 500 per class
  cfg = ml_collections.ConfigDict({"label_fractions": (0.01, 0.1), "shots_per_class": (1, 10)})
  assert lowshot.settings(cfg, labels) == [("labels_1%", 5), ("labels_10%", 50),
                                           ("shots_1", 1), ("shots_10", 10)]
  cfg.label_fractions = (0.0001,)   # under one per class: one per class
  assert lowshot.settings(cfg, labels)[0] == ("labels_0.01%", 1)


def test_few_labels_fit_knn_and_the_probe_on_the_subset_only():
  """The result of each seed is the kNN and probe fit on that seed's subset directly."""
  from tests.test_sharded_evaluation import blobs
  xtr, ytr, xte, yte = blobs()
  lines = []
  few = evaluate.evaluate_lowshot(xtr, ytr, [(0, len(xtr))], xte, yte, LOWSHOT, 4,
                                  log=lines.append)
  assert list(few) == ["labels_2%", "shots_1", "shots_3"]
  assert few["labels_2%"]["per_class"] == 5 and few["labels_2%"]["num_labels"] == 20
  for name, per_class in (("shots_1", 1), ("labels_2%", 5)):
    for seed in range(2):
      sub = evaluate.balanced_subset(ytr, per_class, seed)
      rows = evaluate.shard_rows(xtr[sub], ytr[sub])
      knn = evaluate.knn_top1(rows, xte, yte, k=200, temperature=0.1, num_classes=4)
      assert few[name]["knn_top1"]["values"][seed] == knn
      probe = evaluate.linear_probe(rows, xte, yte, num_classes=4, epochs=20, batch_size=64,
                                    lr=1e-2, weight_decay=0.0, seed=seed)
      assert few[name]["linear_top1"]["values"][seed] == pytest.approx(probe, abs=1 / len(yte))
    values = few[name]["knn_top1"]["values"]
    assert few[name]["knn_top1"]["mean"] == pytest.approx(np.mean(values))
  # Overlapping classes: more labels do better than one per class, and all beat chance.
  assert few["labels_2%"]["knn_top1"]["mean"] > few["shots_1"]["knn_top1"]["mean"] > 0.3
  assert lines[0].startswith("few labels, labels_2% (5 per class, 20 in all, 2 seeds): kNN top-1")
  json.dumps(few)


def test_bad_few_label_settings_are_one_line_errors():
  for overrides, message in (({"eval.label_fractions": (0.0,)}, "label_fractions must lie in"),
                             ({"eval.label_fractions": (1.5,)}, "label_fractions must lie in"),
                             ({"eval.shots_per_class": (0,)}, "shots_per_class must be positive"),
                             ({"eval.shots_per_class": (1,), "eval.lowshot_seeds": 0},
                              "lowshot_seeds must be >= 1")):
    with pytest.raises(run_config.ConfigError, match=message):
      run_config.validate_config(tiny_config(**overrides), 1)


@pytest.mark.slow
@needs_cifar10
def test_a_run_reports_its_few_label_evaluation(tmp_path):
  from ssl_jax import train
  config = tiny_config(**{"eval.shots_per_class": (2,), "eval.label_fractions": (0.1,),
                          "eval.lowshot_seeds": 2})
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  few = summary["lowshot"]
  assert set(few) == {"labels_10%", "shots_2"}
  assert few["shots_2"]["num_labels"] == 20 and few["labels_10%"]["per_class"] == 5
  assert all(0 <= v <= 1 for s in few.values() for m in ("knn_top1", "linear_top1")
             for v in s[m]["values"]) and len(few["shots_2"]["knn_top1"]["values"]) == 2
  saved = json.load(open(tmp_path / "run" / "summary.json"))
  assert saved["lowshot"]["shots_2"]["knn_top1"] == few["shots_2"]["knn_top1"]
