"""The CLI end to end on real CIFAR-10 images: learning, resume, standalone evaluation.

The learning tests run the quickstart recipe shrunk to a minute or two on 2
CPU cores (`tests.helpers.learning_command`) and assert that kNN top-1 beats
the untrained network by the margin the seeds support
(`tests.helpers.LEARNING_MARGINS`, measured by tests/learning_margins.py).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import LEARNING_MARGINS, learning_command, needs_cifar10, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(module, *args, devices=2, timeout=900):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout + proc.stderr


@needs_cifar10
def test_quickstart_learns_resumes_and_evaluates(tmp_path):
  workdir = str(tmp_path / "run")
  out = _cli("ssl_jax.main", *learning_command("ours", workdir, epochs=2))
  assert "data source: folder:" in out and "untrained network: kNN top-1" in out
  first = json.load(open(os.path.join(workdir, "summary.json")))
  # Same command with more epochs: resumes from the epoch-2 checkpoint.
  out = _cli("ssl_jax.main", *learning_command("ours", workdir))  # 6 epochs
  assert "resuming from checkpoint at step 38 (epoch 2)" in out
  assert "calibrating the bank" not in out
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  for key in ("knn_top1_init", "knn_top1", "knn_top1_embedding", "linear_top1",
              "seconds_per_epoch", "images_per_second", "peak_memory_bytes", "epochs", "method",
              "dataset", "num_train_examples", "devices", "train_seconds", "wall_seconds"):
    assert key in summary, key
  assert summary["num_train_examples"] == 2500 and summary["devices"] == 2
  assert summary["knn_top1_init"] == first["knn_top1_init"]
  assert f"kNN top-1: untrained {100 * summary['knn_top1_init']:.2f}% -> trained" in out
  assert summary["knn_top1"] > summary["knn_top1_init"] + LEARNING_MARGINS["ours"], summary
  assert summary["linear_top1"] > 0.2
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert max(steps) == 6 * 19
  # Standalone evaluation of the final checkpoint reproduces the final kNN.
  out = _cli("ssl_jax.evaluate", "--workdir", workdir)
  result = json.load(open(os.path.join(workdir, "eval.json")))
  assert result["step"] == 6 * 19
  assert result["knn_top1"] == pytest.approx(summary["knn_top1"], abs=1e-9)
  assert (
      f"checkpoint of step {6 * 19} (epoch 6.00): kNN top-1 {100 * result['knn_top1']:.2f}% on "
      f"backbone features ({100 * result['knn_top1_embedding']:.2f}% on the projection), linear "
      f"probe top-1 {100 * result['linear_top1']:.2f}%, on the test split; written to "
      f"{workdir}/eval.json.") in out


@needs_cifar10
@pytest.mark.parametrize("method", [pytest.param("simclr", marks=pytest.mark.slow),
                                    pytest.param("byol", marks=pytest.mark.extended),
                                    pytest.param("ours_vit", marks=pytest.mark.extended)])
def test_two_view_methods_and_the_vit_learn(tmp_path, method):
  """SimCLR and BYOL, and ours on ViT-Ti (width 1/4, 4 px patches, AdamW), beat
  their untrained network on real images (SimCLR in `-m slow`, the others in `-m extended`)."""
  workdir = str(tmp_path / "run")
  _cli("ssl_jax.main", *learning_command(method, workdir))
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["knn_top1"] > summary["knn_top1_init"] + LEARNING_MARGINS[method], summary


@needs_cifar10
@pytest.mark.slow
def test_the_supervised_method_learns(tmp_path):
  """The supervised reference's classifier beats chance (10 classes) on real images by the
  margin its seeds support, and the run reports it beside kNN and the probe."""
  workdir = str(tmp_path / "run")
  out = _cli("ssl_jax.main", *learning_command("supervised", workdir))
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["classifier_top1"] > 0.1 + LEARNING_MARGINS["supervised_classifier"], summary
  assert "classifier top-1" in out


def test_the_supervised_method_refuses_labels_its_classifier_cannot_output():
  from ssl_jax import builders
  for labels, match in [(np.arange(12) % 10, r"labels in \[0, config.model.embed_dim=8\).*"
                         r"set --config.model.embed_dim to the number of classes"),
                        (np.full(12, -1), r"\(-1: unlabelled data\)")]:
    config = tiny_config("supervised", **{"model.embed_dim": 8})
    model = builders.build_model(config)
    _, tx = builders.build_optimizer(config, 1)
    with pytest.raises(ValueError, match=match):
      builders.make_train_step(config, model, tx, 1, 12, labels=labels)
  # No label table at all: refused, not a step whose every label is out of range
  # (jnp.take fills those with INT_MIN, and the loss became NaN without a word).
  with pytest.raises(ValueError, match=r"needs the training split's labels"):
    builders.make_train_step(config, model, tx, 1)
  builders.make_train_step(config, model, tx, 1, 12)  # FLOP counting: N is enough
