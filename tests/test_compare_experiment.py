"""The comparison experiment's config presets and report (table, JSON, plot)."""


import pytest

from configs import default
from experiments.compare import config as compare_config
from experiments.compare import run as compare_run
from ssl_jax import run_config


def _summary(ips, knn):
  return {"knn_top1_init": 0.2, "knn_top1": knn, "linear_top1": knn + 0.01, "epochs": 4,
          "seconds_per_epoch": 512 / ips * 10, "images_per_second": ips,
          "peak_memory_bytes": None,
          "history": [{"epoch": e, "epoch_seconds": 5.0, **({"knn_top1": knn - 0.01 * (4 - e)}
                                                            if e % 2 == 0 else {})}
                      for e in range(1, 5)]}


def test_presets_are_valid_for_every_method():
  for preset in ("cpu", "gpu"):
    config = compare_config.get_config(preset)
    for method in config.methods:
      c = default.set_method(config.base.copy_and_resolve_references(), method)
      run_config.validate_config(c, num_devices=1)
  with pytest.raises(ValueError, match="preset must be"):
    compare_config.get_config("tpu")


def test_method_presets_set_their_defining_fields():
  npid = default.get_config("npid")
  assert (npid.bank.init, npid.bank.update_rule, npid.loss.kl_weight) == ("random", "momentum", 0.0)
  ours = default.get_config("ours")
  assert (ours.bank.init, ours.bank.update_rule, ours.loss.kl_weight) == ("calibrated", "grad", 1.0)
  assert default.get_config("simclr").model.head == "mlp"
  assert default.get_config("npid").model.head == "linear"
  with pytest.raises(ValueError, match="config.method must be one of"):
    default.get_config("moco")


def test_report_table_and_plot(tmp_path):
  summaries = {"ours": _summary(400.0, 0.35), "simclr": _summary(200.0, 0.33)}
  rows = compare_run.table_rows(summaries)
  assert rows[0]["knn_top1_by_epoch"] == {2: pytest.approx(0.33), 4: 0.35}
  md = compare_run.markdown(rows, {"preset": "cpu", "command": "cmd", "device": "cpu",
                                   "dataset": "d", "num_train_examples": 10,
                                   "num_test_examples": 5, "model": "m", "batch_size": 2,
                                   "epochs": 4, "ours_over_simclr_images_per_second": 2.0})
  assert "| ours | 20.00 | 33.00 | 35.00 | 36.00 |" in md and "**2.00x**" in md
  pytest.importorskip("matplotlib")
  assert compare_run.plot(summaries, str(tmp_path / "knn.png"))
  assert (tmp_path / "knn.png").stat().st_size > 1000


def test_the_gpu_recipe_gives_only_the_method_an_mlp_head():
  """configs/cifar10.py's MLP head (the recipe search's winner) is the method's alone:
  a sweep that switches its base to NPID gets NPID's linear head back, and the
  two-view baselines keep their own MLP width."""
  from configs import cifar10
  assert (cifar10.get_config("ours").model.head, cifar10.get_config("npid").model.head) == (
      "mlp", "linear")
  base = cifar10.get_config("ours")
  base.unlock()
  npid = default.set_method(base.copy_and_resolve_references(), "npid")
  assert npid.model.head == "linear"
  simclr = default.set_method(base.copy_and_resolve_references(), "simclr")
  assert (simclr.model.head, simclr.model.head_hidden) == (
      "mlp", default.get_config("simclr").model.head_hidden)
