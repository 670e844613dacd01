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
