"""ImageNet-1k, ResNet-50 at 224 px, streamed: the configuration for a pod slice.

    python -m ssl_jax.main --config configs/imagenet.py --workdir gs://BUCKET/run \
        --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets

Needs `imagenet2012` prepared in ArrayRecord format (README, "ImageNet-scale
input"). Every process streams its rows (`data.stream`, `ssl_jax/stream.py`)
with a Grain worker per core, each decoding with libjpeg-turbo and leaving the
crop's resize to the device (`data.decoder="simplejpeg"`, ssl_jax/decoders.py); the bank holds all 1,281,167 training
images, split over the devices (`bank.sharded`: 1,281,167 x 128 float32 is
656 MB in total, not on every device). kNN during training reads the bank
(`eval.knn_source="bank"`): one pass over the 50,000 validation images, not
over 1.28M training images, also for the untrained network (so the bank's
calibration is the only pass over the training images before step 1); the
final evaluation embeds both splits, and kNN and the linear probe split the
training features over every device (`benchmarks/scale.py`: at most 1.61 GiB
per device on 8 devices).

Not run in this repository (no accelerator here can hold it): a test builds
it, shrinks it to a tiny model and mock data and runs two steps through the
same code (tests/test_imagenet_config.py). The batch, learning rates and
epoch count follow NPID's and the paper's ImageNet settings scaled to a
global batch of 4096; they are a starting point, not a tuned recipe.
"""

from configs import default

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_TRAIN = 1_281_167


def get_config(method: str = "ours"):
  """`--config configs/imagenet.py:npid` picks a method (ours, npid, simclr, byol)."""
  config = default.get_config(method or "ours")
  config.data.source = "tfds:imagenet2012"
  config.data.source_chosen = config.data.source
  config.data.source_reason = "configs/imagenet.py"
  config.data.train_split = "train"
  config.data.test_split = "validation"
  config.data.image_size = 224
  config.data.mean, config.data.std = IMAGENET_MEAN, IMAGENET_STD
  config.data.stream = True
  config.data.workers = -1           # one per core this process may use (os.sched_getaffinity)
  config.data.decoder = "simplejpeg"  # the host decodes; the device resizes (ssl_jax/decoders.py)
  config.data.cache_dir = ""

  config.model.name = "resnet50"
  config.model.stem = "imagenet"
  config.model.patch_size = 16      # for --config.model.name=vit_small (ViT-S/16)
  config.model.dtype = "bfloat16"
  config.augment.crop_scale = (0.08, 1.0)
  config.augment.blur_prob = 0.5

  config.batch_size = 4096
  config.num_epochs = 200
  config.optim.name = "lars"
  config.optim.base_lr = 0.3         # per 256 images: 4.8 at batch 4096
  config.optim.weight_decay = 1e-6
  config.optim.warmup_epochs = 10
  config.bank.sharded = True
  # Two passes over chunks of 16,384 bank rows: 0.1 GiB of temporaries instead of
  # 10 GiB for the [B, N] logits at batch 512 (benchmarks/bank_chunked.py).
  config.bank.chunk_rows = 16384
  config.bank.lr = 0.5 * config.batch_size * config.loss.temperature
  config.eval.knn_source = "bank" if config.method in ("ours", "npid") else "embed"
  config.eval.every_epochs = 10
  config.eval.batch_size = 4096
  config.eval.linear_epochs = 100
  config.checkpoint_every_steps = 1000
  config.lock()
  return config
