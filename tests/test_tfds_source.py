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
