"""The four methods at equal training compute, over seeds:

    python -m experiments.compare.flops --config experiments/compare/config.py:cpu_flops --workdir runs/compare_cpu_flops

Every method gets the same FLOP budget: `config.budget`, or by default the
FLOPs of `budget_method`'s (SimCLR's) `budget_epochs` epochs, counted by XLA's
cost analysis of its compiled train step (`ssl_jax/compute.py`). Each run
takes as many whole epochs as fit the budget (`config.train_flops`) with its
learning-rate, warmup and EMA schedules planned over them, so a cheaper step
buys more epochs. A sweep (`experiments/sweep/`): runs are reused and
resumed; results.{json,md} and flops.png go to `config.results_dir`.
"""

from __future__ import annotations

import copy
import os

import ml_collections

from configs import default
from experiments import sweep


def budget_flops(config: ml_collections.ConfigDict) -> float:
  """config.budget, or the FLOPs of budget_method's budget_epochs epochs on the base config."""
  if float(config.get("budget", 0) or 0) > 0:
    return float(config.budget)
  from ssl_jax import builders, compute, data as data_lib
  from ssl_jax.run_config import num_shards
  base = default.set_method(copy.deepcopy(config.base), config.budget_method)
  train, _, _ = builders.load_data(base, log=lambda *a: None)
  spe = data_lib.steps_per_epoch(train.num_examples, int(base.batch_size), num_shards(base))
  budget = compute.step_flops(base, train, spe) * spe * int(config.budget_epochs)
  print(f"budget: {budget:.4g} FLOPs ({config.budget_method}'s {config.budget_epochs} epochs)")
  return budget


def variants(config: ml_collections.ConfigDict) -> tuple:
  budget = budget_flops(config)
  with config.unlocked():
    config.budget = budget  # the report states it; a rerun reuses the runs
  return tuple((m, f"method={m} train_flops={budget!r}") for m in config.methods)


def flops_by_epoch(summary: dict) -> dict[int, float]:
  per_epoch = summary["train_flops"] / summary["epochs"]
  return {e: e * per_epoch for e in sweep.knn_by_epoch(summary)}


def markdown(config, rows: dict, results: dict, meta: dict) -> str:
  head = ["method", "seeds", "epochs in budget", "GFLOP / image", "kNN untrained",
          "kNN", "linear", "training s", "ours ahead by (kNN points)"]
  table = []
  for name, r in rows.items():
    first = results[name][0]
    table.append([name, len(r["seeds"]), first["epochs"], f"{first['flops_per_image'] / 1e9:.3f}",
                  r["knn_top1_by_epoch"][0].pct(), r["knn_top1"].pct(), r["linear_top1"].pct(),
                  f"{r['training_seconds'].mean:.0f}",
                  "-" if name == "ours" or "ours" not in rows else sweep.knn_lead(rows["ours"], r)])
  return "\n".join([
      f"# Comparison at equal compute: {meta['preset']} preset", "",
      f"Command: `{meta['command']}`", "",
      f"Device: {meta['device']}; {meta['dataset']} ({meta['num_train_examples']} train "
      f"images, {meta['num_test_examples']} test images); {meta['model']}; batch "
      f"{meta['batch_size']}; seeds {meta['seeds']}. Budget: {config.budget:.4g} training "
      f"FLOPs per run ({config.budget_method}'s {config.budget_epochs} epochs, XLA's count "
      f"of the lowered step); each method takes the whole epochs that fit, its schedules "
      f"planned over them. Top-1 in %, mean ± half the range over seeds; leads vs ours: "
      f"mean (per seed).", "",
      *sweep.fewer_seeds_in_rows(rows, meta["seeds"]),
      sweep.markdown_table(head, table), ""])


def plot(rows: dict, results: dict, path: str) -> bool:
  plt = sweep.pyplot()
  if plt is None:
    return False
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for name, r in rows.items():
    flops = flops_by_epoch(results[name][0])
    epochs = sorted(r["knn_top1_by_epoch"])
    knn = [100 * r["knn_top1_by_epoch"][e].mean for e in epochs]
    axes[0].plot([flops[e] for e in epochs], knn, marker="o", label=name)
    axes[1].plot([r["seconds_by_epoch"][e].mean for e in epochs], knn, marker="o", label=name)
  axes[0].set_xlabel("training FLOPs")
  axes[1].set_xlabel("training seconds (evaluation excluded)")
  for ax in axes:
    ax.set_ylabel("kNN top-1 (%), mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
  sweep.save_figure(fig, path)
  return True


def budget_meta(config, results: dict, command: str) -> dict:
  """sweep.describe's metadata plus the budget and each variant's epochs and FLOPs per image."""
  return {**sweep.describe(config, results, command), "budget_flops": config.budget,
          "budget_method": config.budget_method, "budget_epochs": config.budget_epochs,
          "epochs_in_budget": {n: runs[0]["epochs"] for n, runs in results.items() if runs},
          "flops_per_image": {n: runs[0]["flops_per_image"] for n, runs in results.items()
                              if runs}}


def report(config, results: dict, command: str) -> str:
  rows = sweep.rows_of(results)
  meta = budget_meta(config, results, command)
  md = markdown(config, rows, results, meta)
  sweep.write_results(config.results_dir, "results", meta, rows, md)
  plot(rows, results, os.path.join(config.results_dir, "flops.png"))
  return md


if __name__ == "__main__":
  sweep.main("experiments.compare.flops", report, variants)
