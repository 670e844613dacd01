"""The backbone registry (`ssl_jax.models`): every entry's shapes, parameter counts
against the published networks, and a few train steps with every method."""

import flax.linen as nn
import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import devices as ssl_devices
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


@pytest.mark.parametrize("name,size,patch,expected", [
    # timm's vit_small_patch16_224 / vit_tiny_patch16_224 with num_classes=0 have
    # 21,665,664 and 5,524,416: one more position-embedding row, for the class
    # token, than ours (big_vision adds no position to the class token).
    ("vit_small", 224, 16, 21_665_664 - 384), ("vit_tiny", 224, 16, 5_524_416 - 192),
    # CIFAR: 4 px patches, an 8 x 8 grid instead of 14 x 14.
    ("vit_tiny", 32, 4, 5_524_224 - (196 - 64) * 192 - 16 * 16 * 3 * 192 + 4 * 4 * 3 * 192)])
def test_vit_parameter_counts_match_the_published_sizes(name, size, patch, expected):
  assert _backbone_params(name, size, patch_size=patch) == expected
  # Pooling by the mean of the patches drops the class token only.
  width = models.get(name).feature_width(1.0)
  assert _backbone_params(name, size, patch_size=patch, pool="gap") == expected - width


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
  with pytest.raises(ValueError, match="config.model.pool"):
    models.create_encoder("vit_tiny", pool="max")
  with pytest.raises(ValueError, match="config.model.patch_size"):
    models.create_encoder("vit_tiny", patch_size=0)
  # A ViT reads no stem: any value passes, as patch_size and pool do for a ResNet.
  models.create_encoder("vit_tiny", stem="tiny")
  models.create_encoder("resnet18", patch_size=0, pool="max")
  enc = models.create_encoder("vit_tiny", patch_size=5, width=0.25)
  with pytest.raises(ValueError, match=r"patch_size=5 must divide the image size.*32x32"):
    jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                    train=False))


def test_run_config_checks_the_fields_the_backbone_reads():
  from ssl_jax import run_config
  config = tiny_config(**{"model.name": "vit_tiny", "model.patch_size": 6})
  with pytest.raises(run_config.ConfigError,
                     match=r"config.model.patch_size must be a positive divisor of "
                           r"config.data.image_size \(32\), got 6"):
    run_config.validate_config(config, 1)
  config = tiny_config(**{"model.name": "vit_tiny", "model.pool": "max"})
  with pytest.raises(run_config.ConfigError, match="config.model.pool"):
    run_config.validate_config(config, 1)
  run_config.validate_config(tiny_config(**{"model.name": "vit_tiny", "model.stem": "x"}), 1)
  with pytest.raises(run_config.ConfigError, match="config.model.stem"):
    run_config.validate_config(tiny_config(**{"model.stem": "x"}), 1)


def test_each_backbone_states_its_usual_optimizer_and_a_run_without_it_gets_a_note():
  from ssl_jax import run_config
  assert run_config.optim_note(tiny_config()) is None   # ResNet: SGD, the default
  config = tiny_config(**{"model.name": "vit_tiny"})
  note = run_config.optim_note(config)
  assert note.startswith("note: vit_tiny is usually trained with optim.name='adamw'")
  assert ("--config.optim.name=adamw --config.optim.base_lr=0.0005 "
          "--config.optim.weight_decay=0.05") in note
  config.optim.name = "adamw"
  assert run_config.optim_note(config) is None
  assert models.describe(config.model) == "width 0.125, patch 4, cls pool"
  assert models.describe(tiny_config().model) == "width 0.125, cifar stem"


def test_each_backbone_says_truly_whether_it_has_batchnorm():
  """`Backbone.has_batchnorm` against the variables its module creates (linear head)."""
  for name in models.names():
    enc = models.create_encoder(name, width=0.25, head="linear")
    variables = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                                train=False))
    assert bool(variables.get("batch_stats")) == models.get(name).has_batchnorm, name


def test_a_model_config_without_the_vit_fields_means_the_defaults():
  from configs import default
  cfg = default.get_config().model
  assert {k: cfg[k] for k in models.FIELD_DEFAULTS} == models.FIELD_DEFAULTS
  old = ml_collections.ConfigDict({"name": "vit_tiny", "width": 0.25})  # saved before them
  assert models.describe(old) == "width 0.25, patch 4, cls pool"


def test_weight_decay_falls_on_kernels_only():
  """Not on biases (attention's are 2-d), norms, the position embedding or the class
  token; for a convnet that is the leaves of more than one dimension, as before."""
  from ssl_jax import optim
  for name in ("vit_tiny", "resnet10", "mobilenet_v2"):
    enc = models.create_encoder(name, width=0.25, head="mlp", head_hidden=16)
    params = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))["params"]
    mask = optim._decay_mask(params)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): (leaf, m) for (path, leaf), m in
            zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(mask))}
    decayed = {k for k, (_, m) in flat.items() if m}
    assert decayed == {k for k in flat if k.endswith("/kernel")}, name
    if name != "vit_tiny":
      assert decayed == {k for k, (p, _) in flat.items() if p.ndim > 1}, name
    else:
      assert any(k.endswith("pos_embedding") or k.endswith("/cls") for k in flat)
      assert any(k.endswith("/bias") and p.ndim == 2 for k, (p, _) in flat.items())


def test_adamw_decays_kernels_and_not_the_rest():
  """One AdamW step from zero gradients: only the decayed leaves move, by lr * wd * value."""
  import ml_collections
  from ssl_jax import optim
  cfg = ml_collections.ConfigDict({"name": "adamw", "weight_decay": 0.1, "momentum": 0.9})
  tx = optim.create_optimizer(cfg, lambda step: 0.01)
  params = {"Dense_0": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)},
            "pos_embedding": jnp.full((1, 2, 2, 3), 2.0)}
  updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.01 * 0.1 * 2.0, rtol=1e-6)
  assert not np.any(updates["Dense_0"]["bias"]) and not np.any(updates["pos_embedding"])


def test_vit_position_embedding_is_kept_at_its_own_size_and_resized_at_another():
  from ssl_jax.models import vit
  net = vit.ViT("vit_tiny", width=0.25, patch_size=16)
  x224 = jax.random.normal(jax.random.PRNGKey(1), (2, 224, 224, 3))
  variables = net.init(jax.random.PRNGKey(0), x224, train=False)
  pos = variables["params"]["pos_embedding"]
  assert pos.shape == (1, 14, 14, 48)
  # Same grid: the trained embedding itself, not a resampled copy.
  assert vit.resize_posemb(pos, (14, 14)) is pos
  # A grid that is linear in the position stays linear inside when resized
  # (bilinear, pixel centres aligned: position i of 16 sits at (i + 0.5) * 14/16 - 0.5).
  ramp = jnp.broadcast_to(jnp.arange(14.0)[None, :, None, None], (1, 14, 14, 48))
  up = vit.resize_posemb(ramp, (16, 16))
  centres = (np.arange(16) + 0.5) * 14 / 16 - 0.5
  np.testing.assert_allclose(up[0, 2:-2, 3, 0], centres[2:-2], atol=1e-5)
  # At 256 px the forward uses the embedding resized to 16 x 16: the same as
  # variables that hold the resized embedding already.
  x256 = jax.random.normal(jax.random.PRNGKey(2), (2, 256, 256, 3))
  h256 = net.apply(variables, x256, train=False)
  resized = {"params": {**variables["params"], "pos_embedding": vit.resize_posemb(pos, (16, 16))}}
  np.testing.assert_allclose(h256, net.apply(resized, x256, train=False), rtol=1e-5, atol=1e-5)
  assert h256.shape == (2, 48) and np.all(np.isfinite(h256))
  # ... and not the same as ignoring the position embedding's change of grid.
  zero = {"params": {**variables["params"], "pos_embedding": jnp.zeros_like(pos)}}
  assert np.abs(net.apply(zero, x224, train=False) - net.apply(variables, x224, train=False)
                ).max() > 1e-3


def test_a_vit_forward_is_the_same_on_four_devices_as_on_one():
  enc = models.create_encoder("vit_tiny", width=0.25, patch_size=4, head="mlp", head_hidden=32,
                              bn_axis_name="batch")
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3))
  variables = jax.jit(lambda: enc.init(jax.random.PRNGKey(0), x, train=False))()

  def forward(v, images):
    (h, z), _ = enc.apply(v, images, train=True, mutable=["batch_stats"])
    return h, z
  outs = {}
  for n in (4, 1):
    devices = jax.local_devices()[:n]
    v = ssl_devices.replicate(variables, devices)
    h, z = jax.pmap(forward, axis_name="batch", devices=devices)(v, x.reshape(n, 8 // n, 32, 32, 3))
    outs[n] = (np.asarray(h).reshape(8, -1), np.asarray(z).reshape(8, -1))
  np.testing.assert_allclose(outs[4][0], outs[1][0], rtol=1e-5, atol=1e-5)
  # The MLP head's BatchNorm uses the global batch on 4 devices too.
  np.testing.assert_allclose(outs[4][1], outs[1][1], rtol=1e-4, atol=1e-5)


@pytest.mark.extended  # about 8 minutes for the 8 pairs on 2 cores
@needs_cifar10
@pytest.mark.parametrize("method", methods.names())
@pytest.mark.parametrize("backbone", ["mobilenet_v2", "vit_tiny"])
def test_each_backbone_trains_with_every_method_on_four_devices_as_on_one(backbone, method):
  """Two steps (the first at warmup's zero learning rate) on 4 devices and on 1.

  The BatchNorm statistics are the global batch's on 4 devices too, so both
  make the same update up to float32 summation order. MobileNetV2's early
  gradients at initialisation turn out far more sensitive to that order
  than ResNet's (measured, not explained: perhaps cancellation through its
  17 BatchNorm-ed blocks): the two differ by up to about 3% of a leaf's
  update (ResNet-10: 7e-5). Per-device BatchNorm statistics (the model built
  with bn_axis_name=None) differ by 260% (ResNet-10: 120%), so the bound of
  10% still tells the two apart. The ViT has no BatchNorm but in the heads
  of SimCLR and BYOL. It runs with SGD here, not its usual AdamW: Adam's
  first steps are about lr * sign(g) for every leaf, so gradients that are
  float noise on both sides would move as much as real ones (measured: 178%
  of an update apart), and the test compares gradients, not optimizers."""
  config = tiny_config(method=method, **{"model.name": backbone, "model.width": 0.25})
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


@pytest.mark.extended
@needs_cifar10
def test_a_vit_run_with_a_sharded_bank_loads_exports_and_embeds(tmp_path):
  """ViT-Ti through the whole system: train (AdamW, the bank split over the devices),
  load_encoder, export; no BatchNorm anywhere (a linear head)."""
  import ssl_jax
  from ssl_jax import builders, train
  from tests.test_encoder import _evaluation_features
  config = tiny_config(**{"model.name": "vit_tiny", "model.width": 0.25, "optim.name": "adamw",
                          "optim.base_lr": 5e-4, "optim.weight_decay": 0.05,
                          "bank.sharded": True})
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(summary["knn_top1"]) and summary["epochs"] == 1
  encoder = ssl_jax.load_encoder(str(tmp_path / "run"))
  assert set(encoder.variables) == {"params", "batch_stats"} and not encoder.variables[
      "batch_stats"]
  _, test, _ = builders.load_data(config, log=lambda *a: None)
  h, z = encoder.embed(test.images[:64])
  eh, ez = _evaluation_features(tmp_path / "run", test)
  np.testing.assert_array_equal(z, ez[:64])
  assert h.shape == (64, models.get("vit_tiny").feature_width(0.25))
  from tests.test_encoder import _cli, _ok
  _ok(_cli("ssl_jax.export", "--workdir", tmp_path / "run", "--out", tmp_path / "m.msgpack"))
  np.testing.assert_array_equal(ssl_jax.load_encoder(str(tmp_path / "m.msgpack")).embed(
      test.images[:64])[1], z)


def test_a_bf16_vit_keeps_float32_parameters_and_the_float32_result_within_bf16_rounding():
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  f32 = models.create_encoder("vit_tiny", width=0.25)
  bf16 = models.create_encoder("vit_tiny", width=0.25, dtype="bfloat16")
  variables = f32.init(jax.random.PRNGKey(0), x, train=False)
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
      bf16.init(jax.random.PRNGKey(0), x, train=False))
  assert {p.dtype for p in jax.tree_util.tree_leaves(
      bf16.init(jax.random.PRNGKey(0), x, train=False))} == {jnp.dtype(jnp.float32)}
  (h32, z32), (h16, z16) = (m.apply(variables, x, train=False) for m in (f32, bf16))
  assert h16.dtype == z16.dtype == jnp.float32
  # 12 blocks of bf16 matmuls: a few percent of h's scale, and the same direction.
  assert np.abs(h16 - h32).max() < 0.1 * np.abs(h32).max()
  assert np.min(np.sum(z16 * z32, axis=1)) > 0.98


@pytest.mark.parametrize("shifts", [True, False])
@pytest.mark.parametrize("strides,size", [(1, 8), (2, 8), (2, 7)])
def test_the_depthwise_conv_equals_flax_grouped_conv(strides, size, shifts):
  """MobileNetV2's depthwise 3x3 (nine shifts, CPU's default, or one lax conv) against
  nn.Conv with one group per channel on the same kernel: values and both gradients."""
  from ssl_jax.models import mobilenet_v2
  x = jax.random.normal(jax.random.PRNGKey(0), (3, size, size, 16))
  ours = mobilenet_v2.DepthwiseConv3x3(strides, jnp.float32, shifts)
  ref = nn.Conv(16, (3, 3), strides, padding=1, feature_group_count=16, use_bias=False)
  variables = ours.init(jax.random.PRNGKey(1), x)
  assert variables["params"]["kernel"].shape == ref.init(jax.random.PRNGKey(1), x)[
      "params"]["kernel"].shape == (3, 3, 1, 16)
  loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
  np.testing.assert_allclose(ours.apply(variables, x), ref.apply(variables, x), atol=1e-5)
  for a, b in zip(jax.grad(loss(ours), argnums=(0, 1))(variables, x),
                  jax.grad(loss(ref), argnums=(0, 1))(variables, x)):
    for la, lb in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-4)
