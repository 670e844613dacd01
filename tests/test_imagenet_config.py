"""configs/imagenet.py builds, and, shrunk, runs through the real streaming code.

The config itself (ResNet-50, 224 px, 1.28M bank rows, batch 4096) cannot run
here. The test keeps everything that makes it the ImageNet config (TFDS
`imagenet2012` streamed from ArrayRecord records, the ImageNet stem, bf16,
LARS, the sharded bank in chunks, blur, kNN from the bank) and shrinks the sizes: TFDS's
mock data stands in for the dataset (random JPEGs of ImageNet's features), a
tiny ResNet, 32 px, 16 images, two steps. TensorFlow is imported for the mock
only, in a child process (in the test process it can abort later tests).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
import tensorflow_datasets as tfds
from configs import imagenet
from ssl_jax import train

config = imagenet.get_config()
assert (config.model.name, config.model.stem, config.data.image_size) == ("resnet50", "imagenet", 224)
assert config.data.stream and config.bank.sharded and config.eval.knn_source == "bank"
assert config.bank.chunk_rows == 16384  # 4 rows a device here: one chunk of 4
assert config.optim.name == "lars" and config.model.dtype == "bfloat16"
config.unlock()
config.model.name, config.model.width, config.model.head_hidden = "resnet10", 0.0625, 32
config.data.image_size, config.batch_size, config.eval.batch_size = 32, 8, 16
config.data.workers, config.num_epochs, config.eval.every_epochs = 0, 1, 1
config.eval.linear_epochs, config.eval.knn_k, config.checkpoint_every_steps = 1, 5, 0
config.optim.warmup_epochs, config.bank.lr = 0, 0.5 * 8 * config.loss.temperature
with tfds.testing.mock_data(num_examples=16):
  summary = train.train_and_evaluate(config, sys.argv[1])
print("SUMMARY", json.dumps({k: v for k, v in summary.items() if k != "history"}))
"""


@pytest.mark.slow
def test_the_imagenet_config_runs_two_steps_on_mock_imagenet(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "streaming 16 of the 16 examples of tfds:imagenet2012, split 'train'" in proc.stdout
  assert "split 'validation'" in proc.stdout
  summary = json.loads(proc.stdout.split("SUMMARY ", 1)[1])
  assert summary["num_train_examples"] == 16 and summary["input_pipeline"] == "stream"
  assert summary["devices"] == 4 and summary["replicas_identical"]
  # The machine, for sweeps whose records come from several (experiments/sweep/report.py).
  assert summary["device"].startswith("4 x cpu (") and "cores)" in summary["device"]
  assert all(0.0 <= summary[k] <= 1.0 for k in ("knn_top1", "knn_top1_bank", "linear_top1"))
  metrics = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert max(m["step"] for m in metrics) == 2
