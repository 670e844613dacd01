"""The benchmark suite's parts run and report sane numbers (no speed is asserted)."""

import json

import numpy as np
import pytest

from benchmarks import config as bench_config
from benchmarks import run as bench
from configs import quickstart
from tests.helpers import CIFAR10, needs_cifar10


def _cfg():
  cfg = bench_config.get_config("cpu")
  cfg.warmup_steps, cfg.timed_steps, cfg.bank_rows = 1, 1, 1000
  return cfg


@pytest.mark.parametrize("method,augment,model", [
    pytest.param("ours", True, "resnet10", marks=pytest.mark.slow),
    pytest.param("simclr", False, "resnet10", marks=pytest.mark.extended),
    pytest.param("ours", True, "vit_tiny", marks=pytest.mark.extended),
    pytest.param("simclr", True, "mobilenet_v2", marks=pytest.mark.extended)])
def test_step_benchmark_reports_flops_memory_and_throughput(method, augment, model):
  base = quickstart.get_config()
  base.unlock()
  peak = bench.matmul_peak(256, "float32", repeats=2)["flops_per_second"]
  r = bench.step_benchmark(base, method, model, 0.125, 16, augment, _cfg(), peak)
  assert r["model"] == f"{model} w0.125"
  assert r["images_per_second"] > 0 and r["compile_seconds"] > 0
  # XLA's count must at least cover the bank logits (ours) or the encoder.
  assert r["flops_per_step"] > 2 * 16 * 1000 * 128
  assert 0 < r["fraction_of_peak"] < 2
  assert r["xla_memory_bytes_per_device"] > 0


def test_bank_benchmark_measures_or_skips_by_memory():
  r = bench.bank_benchmark(2000, 128, 64, limit_gb=1.0, repeats=1, rounds=1)
  assert r["step_ms"] > 0 and r["fused_step_ms"] > 0 and r["bank_bytes"] == 2000 * 128 * 4
  # Both paths compute the same loss, z-gradient and bank, up to float rounding.
  assert r["fused_max_abs_diff"] < 1e-5
  assert r["xla_memory_bytes"] > 0 and r["fused_xla_memory_bytes"] > 0
  big = bench.bank_benchmark(10_000_000, 128, 512, limit_gb=1.0)
  assert "skipped" in big and "limit" in big["skipped"]


@needs_cifar10
def test_markdown_table_lists_every_measurement(tmp_path):
  results = {
      "preset": "cpu", "command": "python -m benchmarks.run",
      "environment": {"device_kind": "cpu", "device_count": 4, "platform": "cpu",
                      "jax": "x", "date": "2026-11-28", "processor": "Some CPU (avx2)",
                      "cpu_count": 2},
      "peak": {"dtype": "float32", "n": 256, "flops_per_second": 1e11},
      "steps": [{"method": "ours", "model": "resnet10 w0.125", "batch": 16,
                 "augment": "included", "images_per_second": 100.0, "step_seconds": 0.16,
                 "compile_seconds": 3.0, "gflops_per_image": 0.05, "fraction_of_peak": 0.1,
                 "xla_memory_bytes_per_device": 2 ** 20}],
      "ratios": {"resnet10 w0.125 batch 16 augment included": 2.0},
      "bank": [bench.bank_benchmark(1000, 128, 32, 1.0, repeats=1, rounds=1),
               bench.bank_benchmark(10_000_000, 128, 512, 1.0)],
      "input": bench.input_benchmark(f"folder:{CIFAR10}", 20, 512),
  }
  text = bench.markdown(results)
  assert "| ours | resnet10 w0.125 | 16 | included | 100 |" in text
  assert "2.00x" in text and "skipped" in text and "JPEG decode" in text
  assert "(cpu; host Some CPU (avx2), 2 cores)" in text
  assert results["input"]["batch_images_per_second"] > 0


def test_results_are_written_whole_after_every_part_and_marked_partial(tmp_path):
  env = {"device_kind": "cpu", "device_count": 1, "platform": "cpu", "jax": "x",
         "date": "2026-11-29"}
  results = {"preset": "gpu", "command": "python -m benchmarks.run", "environment": env,
             "complete": False}
  path = str(tmp_path / "out" / "gpu")
  bench.write_results(results, path)  # stopped before the first measurement
  assert "**Partial**" in (tmp_path / "out" / "gpu.md").read_text()
  results["peak"] = {"dtype": "bfloat16", "n": 256, "flops_per_second": 1e12}
  results["steps"] = [{"method": m, "model": "resnet18 w1.0", "batch": 512,
                       "augment": "included", "images_per_second": ips, "step_seconds": 0.01,
                       "compile_seconds": 20.0, "gflops_per_image": 3.3,
                       "fraction_of_peak": 0.4, "xla_memory_bytes_per_device": None}
                      for m, ips in (("ours", 90_000.0), ("simclr", 45_000.0))]
  results["ratios"] = bench.simclr_ratios(results["steps"])
  bench.write_results(results, path)  # stopped during the bank part
  md = (tmp_path / "out" / "gpu.md").read_text()
  assert "| simclr | resnet18 w1.0 | 512 | included | 45,000 |" in md
  assert "2.00x" in md and "**Partial**" in md and "Bank cost" not in md
  assert json.loads((tmp_path / "out" / "gpu.json").read_text())["steps"][1]["method"] == "simclr"
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu.json", "gpu.md"]
  results["complete"] = True
  results["bank"], results["input"] = [], {"batch": 512, "batch_images_per_second": 1e6}
  bench.write_results(results, path)
  assert "Partial" not in (tmp_path / "out" / "gpu.md").read_text()


def test_every_benchmark_preset_names_registered_backbones_only():
  from ssl_jax import models
  for preset in ("cpu", "cpu_backbones", "gpu", "gpu_core", "smoke"):
    for model, *_ in bench_config.get_config(preset).grid:
      models.get(model)   # ValueError naming config.model.name otherwise
  assert {row[0] for row in bench_config.get_config("cpu_backbones").grid} == {
      "resnet18", "mobilenet_v2", "vit_tiny"}


def test_a_bad_grid_is_refused_before_anything_is_measured():
  cfg = bench_config.get_config("gpu")
  bench.check_config(cfg, 512)
  cfg.epoch_images = 500
  with pytest.raises(ValueError, match=r"epoch_images \(500\) must be 0"):
    bench.check_config(cfg, 512)
  cfg.epoch_images = 0
  cfg.grid = (("resnet18", 1.0, 512, ("ours",)),)
  with pytest.raises(ValueError, match="grid rows are"):
    bench.check_config(cfg, 512)


@pytest.mark.extended
def test_the_scale_benchmark_compiles_every_program_and_writes_its_plan(tmp_path):
  """`benchmarks/scale.py` at toy shapes: every program at each device count, the JSON
  layout the README describes, and the kNN's per-device features shrinking with D."""
  import os
  import pathlib
  import subprocess
  import sys
  out = tmp_path / "scale"
  cmd = [sys.executable, "-m", "benchmarks.scale", "--config", "configs/imagenet.py",
         "--config.model.name=resnet10", "--config.model.width=0.0625",
         "--config.data.image_size=32", "--config.batch_size=16", "--config.eval.batch_size=16",
         "--num_train=1001", "--num_classes=10", "--devices=2,4", "--methods=ours,simclr",
         f"--out={out}"]
  proc = subprocess.run(cmd, cwd=pathlib.Path(__file__).resolve().parents[1], env=dict(
      os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  results = json.loads((tmp_path / "scale.json").read_text())
  names = {"train_step_ours", "train_step_simclr", "calibrate", "knn", "linear_probe"}
  # save_layout (the mesh mapping's checkpoint copy) computes nothing: its output
  # is the state itself, with no temporaries.
  assert set(results["programs"]) == names | {"save_layout"}
  for name in names:
    for count in ("2", "4"):
      r = results["programs"][name][count]
      assert r["argument_bytes"] > 0 and r["temp_bytes"] >= 0 and r["compile_seconds"] > 0
      assert r["flops"] > 0, (name, count)
  for count in ("2", "4"):
    r = results["programs"]["save_layout"][count]
    assert r["temp_bytes"] == 0 and 0 < r["argument_bytes"] <= r["output_bytes"] < (
        r["argument_bytes"] + 10_000), r
  # resnet10 at width 1/16 has 32-d features: each device holds ceil(1001 / D) rows of them.
  knn = results["programs"]["knn"]
  for count, rows in (("2", 501), ("4", 251)):
    assert rows * 32 * 4 <= knn[count]["argument_bytes"] < rows * 32 * 4 + 200_000
  assert "| knn | 4 |" in (tmp_path / "scale.md").read_text()


def test_the_chunked_bank_benchmark_writes_its_rows(tmp_path):
  """`benchmarks/bank_chunked.py` at toy sizes: timed and planned rows in the layout the
  issue names, chunks that shrink the temporaries, outputs equal to the unchunked pass."""
  from benchmarks import bank_chunked
  out = tmp_path / "bank"
  bank_chunked.main(["--sizes", "3000", "--chunks", "0,256", "--planned", "5000",
                     "--planned_chunk", "256", "--devices", "4", "--batch", "64",
                     "--repeats", "1", "--rounds", "1", "--out", str(out)])
  rows = json.loads((tmp_path / "bank.json").read_text())["rows"]
  assert [(r["N"], r["devices"], r["chunk_rows"]) for r in rows] == [
      (3000, 1, None), (3000, 1, 256), (5000, 4, None), (5000, 4, 256)]
  assert all(r["seconds"] > 0 for r in rows[:2]) and rows[2]["seconds"] is None
  assert rows[1]["temp_bytes"] < rows[0]["temp_bytes"]
  assert rows[3]["temp_bytes"] < rows[2]["temp_bytes"]
  assert rows[1]["max_abs_diff_to_first"] < 1e-5
  assert "| 3,000 | 64 | 1 | 256 |" in (tmp_path / "bank.md").read_text()


@pytest.mark.extended
def test_the_loop_overhead_benchmark_times_every_row_with_two_processes(tmp_path):
  """`benchmarks/loop_overhead.py` at toy settings: 1 and 2 processes of 2 devices,
  every row timed, the layout the README names, and the line fit to process counts."""
  from benchmarks import loop_overhead
  out = tmp_path / "loop"
  loop_overhead.main(["--processes", "1", "2", "--devices", "2", "--model", "resnet10",
                      "--steps", "3", "--warmup", "1", "--rounds", "1", "--out", str(out)])
  results = json.loads((tmp_path / "loop.json").read_text())
  assert set(results["settings"]) == {"1", "2"}
  assert results["settings"]["2"]["processes"] == 2 and results["settings"]["2"]["devices"] == 4
  assert set(results["rows"]) == set(loop_overhead.ROWS)
  assert all(r["ms_per_step"] > 0 for r in results["rows"].values())
  assert results["ratio_mesh_to_pmap"] == pytest.approx(
      results["rows"]["mesh"]["ms_per_step"] / results["rows"]["pmap_before"]["ms_per_step"])
  assert results["prediction"] is None   # a line needs 3 process counts
  assert "| 2 x 2 |" in (tmp_path / "loop.md").read_text()
  row = lambda ms: {"rows": {"pmap_before": {"ms_per_step": 2 * ms}, "mesh": {"ms_per_step": ms}}}
  pred = loop_overhead.predict({"1": row(1.0), "2": row(2.0), "4": row(4.0)})
  assert pred["rows"]["mesh"]["16"] == pytest.approx(16.0)
  assert pred["ratio_mesh_to_pmap"]["64"] == pytest.approx(0.5)


def test_the_peer_benchmark_skips_in_one_line_without_torch(monkeypatch, capsys, tmp_path):
  """`benchmarks/peer.py` needs torch, torchvision and lightly (the `peer` extra), which
  the test suite does not install: without them it says so in one line, writes nothing."""
  from benchmarks import peer
  monkeypatch.setattr(peer, "missing_peer", lambda: ["torch", "lightly"])
  peer.main(["--out", str(tmp_path / "peer")])
  out = capsys.readouterr().out
  assert out == 'benchmarks.peer: skipped: torch, lightly not installed (pip install ".[peer]")\n'
  assert not list(tmp_path.iterdir())


def test_the_peer_tables_list_every_side_ratio_and_part():
  from benchmarks import peer, peer_ops
  row = {"images_per_second": 10.0, "images_per_cpu_second": 6.0, "step_ms": 12800.0,
         "peak_rss_bytes": 3 * 2**30, "threads": "torch 2 intra-op threads"}
  results = {"command": "python -m benchmarks.peer", "environment": "here",
             "rows": {s: row for s in peer.SIDES},
             "ratio_simclr_jax_to_torch": 0.5, "ratio_simclr_jax_to_torch_rounds": [0.4, 0.5, 0.6],
             "parts": {p: {"jax_ms": 2.0, "torch_ms": 1.0, "ratio_jax_to_torch": 0.5}
                       for p in peer_ops.PARTS}}
  md = peer.markdown(results)
  for side in peer.SIDES:
    assert f"| {side} | 10.0 | 6.0 | 12800 | 3.00 | torch 2 intra-op threads |" in md
  assert "| ratio_simclr_jax_to_torch | 0.50 | 0.40, 0.50, 0.60 |" in md
  assert "ratio_ours_to_torch_simclr" not in md          # not measured: no row
  for part in peer_ops.PARTS:
    assert f"| {part} | 2.0 | 1.0 | 0.50 |" in md


def test_the_reformulated_weight_gradients_are_the_convolutions():
  """The `conv3x3_weight_gradient_as_matmuls` and `_nchw` parts time candidate
  reformulations: each must compute the kernel gradient jax.grad gives the convolution."""
  from benchmarks import peer_ops
  parts = peer_ops.jax_parts()
  reference = parts["conv3x3_weight_gradient"]()["params"]["kernel"]
  nchw = parts["conv3x3_weight_gradient_nchw"]().transpose(2, 3, 1, 0)   # OIHW -> HWIO
  for ours in (parts["conv3x3_weight_gradient_as_matmuls"](), nchw):
    assert ours.shape == reference.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(ours, reference, rtol=1e-4,
                               atol=1e-4 * float(np.abs(reference).max()))


def test_the_op_by_op_table_scales_by_count_and_adds_up(monkeypatch, capsys, tmp_path):
  """`benchmarks/peer_ops.py`: each op's time is one call's times the shape's count, the
  totals add the ops up per kind, and without torch it skips in one line."""
  from benchmarks import peer, peer_ops
  parts = {op: {"jax_ms": 2.0, "torch_ms": 1.0} for op in peer_ops._names()}
  parts["3x3 64->64 @32 | weight_gradient"] = {"jax_ms": 8.0, "torch_ms": 2.0}
  r = peer_ops.table(parts)
  assert r["ops"]["3x3 64->64 @32 | weight_gradient"] == {
      "count": 4, "jax_ms": 32.0, "torch_ms": 8.0, "ratio_jax_to_torch": 0.25}
  assert sum(c for *_, c in peer_ops.CONVS) == 20          # ResNet-18's convolutions
  weight = r["totals"]["weight_gradient"]
  assert weight["jax_ms"] == 2.0 * 16 + 32.0 and weight["torch_ms"] == 16 + 8.0
  assert r["totals"]["all"]["jax_ms"] == 2 * 2.0 * 20 + weight["jax_ms"]
  md = peer_ops.markdown({"command": "c", "environment": "e", **r})
  assert "| 3x3 64->64 @32 | weight_gradient | 4 | 32.0 | 8.0 | 0.25 |" in md
  monkeypatch.setattr(peer, "missing_peer", lambda: ["torch"])
  peer_ops.main(["--out", str(tmp_path / "ops")])
  assert capsys.readouterr().out == (
      'benchmarks.peer_ops: skipped: torch not installed (pip install ".[peer]")\n')
  assert not list(tmp_path.iterdir())
