"""The backbone registry (`ssl_jax.models`): every entry's shapes, parameter counts
against the published networks, and a few train steps with every method."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import methods
from ssl_jax import models
from tests.helpers import needs_cifar10, setup_training, tiny_config
from tests.test_train_step import _run


def _backbone_params(name, size, **kwargs):
  enc = models.create_encoder(name, **kwargs)
  variables = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0),
                                              jnp.zeros((1, size, size, 3)), train=False))
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(variables["params"]["backbone"]))


@pytest.mark.parametrize("width,expected", [
    # torchvision.models.mobilenet_v2(width_mult=w).features: the network without its
    # 1000-way classifier (2.2M at 1.0, the paper's 3.4M with it).
    (1.0, 2_223_872), (0.5, 687_680), (0.35, 396_128), (1.4, 4_315_776)])
def test_mobilenet_v2_parameter_counts_match_torchvision(width, expected):
  assert _backbone_params("mobilenet_v2", 224, stem="imagenet", width=width) == expected
  # The CIFAR stem changes strides only.
  assert _backbone_params("mobilenet_v2", 32, stem="cifar", width=width) == expected


@pytest.mark.parametrize("name", models.names())
@pytest.mark.parametrize("stem,size", [("cifar", 32), ("imagenet", 64)])
def test_every_backbone_gives_its_stated_feature_width(name, stem, size):
  backbone = models.get(name)
  enc = models.create_encoder(name, stem=stem, width=0.25, embed_dim=16)
  x = jnp.zeros((2, size, size, 3))
  h, z = jax.eval_shape(lambda: enc.init_with_output(jax.random.PRNGKey(0), x, train=False)[0])
  assert h.shape == (2, backbone.feature_width(0.25)) and z.shape == (2, 16)
  assert h.dtype == z.dtype == jnp.float32


def test_mobilenet_v2_strides_per_stem():
  """ImageNet: total stride 32 (224 px -> 7 x 7 before pooling); CIFAR: 8 (32 -> 4)."""
  from ssl_jax.models import mobilenet_v2

  def last_map(stem, size):
    net = mobilenet_v2.MobileNetV2(width=0.25, stem=stem)
    x = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), x, train=False))
    _, state = jax.eval_shape(lambda v: net.apply(v, x, train=False, capture_intermediates=True,
                                                  mutable=["intermediates"]), variables)
    convs = [v["__call__"][0].shape for k, v in state["intermediates"].items()
             if k.startswith("Conv")]
    return convs[-1][1:3]
  assert last_map("imagenet", 224) == (7, 7)
  assert last_map("cifar", 32) == (4, 4)


def test_unknown_backbones_and_stems_are_refused_naming_the_field():
  with pytest.raises(ValueError, match=r"config.model.name must be one of .*mobilenet_v2"):
    models.create_encoder("mobilenet_v3")
  with pytest.raises(ValueError, match="config.model.stem"):
    models.create_encoder("mobilenet_v2", stem="tiny")


@needs_cifar10
@pytest.mark.parametrize("method", methods.names())
def test_mobilenet_v2_trains_with_every_method_on_four_devices_as_on_one(method):
  """Two steps (the first at warmup's zero learning rate) on 4 devices and on 1.

  The BatchNorm statistics are the global batch's on 4 devices too, so both
  make the same update up to float32 summation order. MobileNetV2's early
  gradients at initialisation turn out far more sensitive to that order
  than ResNet's (measured, not explained: perhaps cancellation through its
  17 BatchNorm-ed blocks): the two differ by up to about 3% of a leaf's
  update (ResNet-10: 7e-5). Per-device BatchNorm statistics (the model built
  with bn_axis_name=None) differ by 260% (ResNet-10: 120%), so the bound of
  10% still tells the two apart."""
  config = tiny_config(method=method, **{"model.name": "mobilenet_v2", "model.width": 0.25})
  split, model, tx, state0 = setup_training(config)
  devices = jax.local_devices()
  s4, m4 = _run(config, state0, model, tx, split, devices, 2)
  s1, m1 = _run(config, state0, model, tx, split, devices[:1], 2)
  assert np.isfinite(m4["loss"]) and m4["nonfinite"] == 0
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
  worst, moved = 0.0, 0.0
  for a, b, c in zip(*(jax.tree_util.tree_leaves(s.params) for s in (s4, s1, state0))):
    update = np.abs(np.asarray(b[0]) - np.asarray(c)).max()
    moved = max(moved, update)
    if update > 1e-4:   # leaves whose true gradient is ~0 move by float noise alone
      worst = max(worst, np.abs(np.asarray(a[0]) - np.asarray(b[0])).max() / update)
  assert moved > 1e-3
  assert worst < 0.1, worst


def test_the_readme_backbone_registers_and_builds():
  """README "Add a backbone": its block registers a backbone that then builds."""
  import pathlib
  import re
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
               if "models.register(models.Backbone" in b)
  try:
    exec(block, {})
    assert "resnet18_half" in models.names()
    enc = models.create_encoder("resnet18_half", width=1.0, embed_dim=8)
    h, z = jax.eval_shape(lambda: enc.init_with_output(
        jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)[0])
    assert h.shape == (2, models.get("resnet18_half").feature_width(1.0)) == (2, 256)
  finally:
    models.BACKBONES.pop("resnet18_half", None)
