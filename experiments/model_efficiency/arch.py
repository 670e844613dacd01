"""Methods across architectures at equal training FLOPs; writes results.{json,md} and arch.png.

    python -m experiments.model_efficiency.arch --config experiments/model_efficiency/config.py:arch --workdir runs/model_arch

Every (method, backbone) run gets the same FLOP budget (`config.budget`, or
`budget_method`'s `budget_epochs` epochs on the base backbone, counted by
XLA as in experiments/compare/flops.py) and takes the whole epochs that fit
it. Each backbone trains with the optimizer its registry entry names
(`ssl_jax.models.Backbone.optim`). Runs live in
`<workdir>/<method>-<model>-w<width>/seed<k>`; rerunning skips finished runs
and resumes an interrupted one.
"""

from __future__ import annotations

import os

import ml_collections

from experiments import sweep
from experiments.compare.flops import budget_flops, budget_meta
from experiments.model_efficiency import config as config_lib


def backbone_overrides(name: str, width: float) -> str:
  """The variant's model fields and the optimizer its backbone is usually trained with."""
  from ssl_jax import models
  optim = " ".join(f"optim.{k}={v}" for k, v in models.get(name).optim)
  return f"model.name={name} model.width={width} {optim}"


def variants(config: ml_collections.ConfigDict) -> tuple:
  budget = budget_flops(config)
  with config.unlocked():
    config.budget = budget  # the report states it; a rerun reuses the runs
  return tuple((config_lib.variant_name(m, name, width),
                f"method={m} {backbone_overrides(name, width)} train_flops={budget!r}")
               for m in config.methods for name, width in config.backbones)


def markdown(config, rows: dict, results: dict, meta: dict) -> str:
  backbones = [tuple(b) for b in config.backbones]
  head = ["method", "backbone", "params", "GFLOP / image (training step)", "epochs in budget",
          "kNN untrained", "kNN", "linear", "training s", "ours ahead by (kNN points)"]
  table = []
  for b in backbones:
    for m in config.methods:
      name = config_lib.variant_name(m, *b)
      if name not in rows:
        continue
      r, first = rows[name], results[name][0]
      ours = config_lib.variant_name("ours", *b)
      table.append([m, f"{b[0]} w{b[1]:g}", f"{r['num_params']['backbone'] / 1e6:.2f}M",
                    f"{first['flops_per_image'] / 1e9:.3f}", first["epochs"],
                    r["knn_top1_by_epoch"][0].pct(), r["knn_top1"].pct(),
                    r["linear_top1"].pct(), f"{r['training_seconds'].mean:.0f}",
                    "-" if m == "ours" or ours not in rows else sweep.knn_lead(rows[ours], r)])
  return "\n".join([
      f"# Model efficiency across architectures: {meta['preset']} preset", "",
      f"Command: `{meta['command']}`", "",
      f"Device: {meta['device']}; {meta['dataset']} ({meta['num_train_examples']} train "
      f"images, {meta['num_test_examples']} test images); batch {meta['batch_size']}; seeds "
      f"{meta['seeds']}. Budget: {config.budget:.4g} training FLOPs per run "
      f"({config.budget_method}'s {config.budget_epochs} epochs on {meta['model']}, XLA's "
      f"count of the lowered step); each run takes the whole epochs that fit, its schedules "
      f"planned over them. Each backbone trains with its registry's optimizer (SGD for the "
      f"convnets, AdamW for the ViT). Params: the backbone's. Top-1 in %, mean ± half the "
      f"range over seeds; leads vs ours on the same backbone: mean (per seed).", "",
      *sweep.fewer_seeds_in_rows(rows, meta["seeds"]),
      sweep.markdown_table(head, table), ""])


def plot(config, rows: dict, results: dict, path: str) -> bool:
  plt = sweep.pyplot()
  if plt is None:
    return False
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  x_of = {"params": lambda n: rows[n]["num_params"]["backbone"] / 1e6,
          "flops": lambda n: results[n][0]["flops_per_image"] / 1e9}
  for m in config.methods:
    names = [n for b in config.backbones if (n := config_lib.variant_name(m, *b)) in rows]
    for (i, metric), (j, x) in ((a, b) for a in enumerate(("knn_top1", "linear_top1"))
                                for b in enumerate(("params", "flops"))):
      if not names:
        continue
      ax = axes[i, j]
      xs = [x_of[x](n) for n in names]
      ax.errorbar(xs, [100 * rows[n][metric].mean for n in names],
                  yerr=[100 * rows[n][metric].spread for n in names], marker="o", capsize=3,
                  linestyle="none", label=m)
      for n, xv in zip(names, xs):
        ax.annotate(n.split("-", 1)[1], (xv, 100 * rows[n][metric].mean), fontsize=7)
  for (i, metric), (j, x) in ((a, b) for a in enumerate(("kNN", "linear"))
                              for b in enumerate(("backbone parameters (millions)",
                                                  "GFLOP per image of the training step"))):
    axes[i, j].set_xlabel(x + " (every run: the same training FLOPs)")
    axes[i, j].set_ylabel(f"{metric} top-1 (%)")
    axes[i, j].grid(alpha=0.3)
  axes[0, 1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.tight_layout()
  sweep.save_figure(fig, path)
  return True


def report(config, results: dict, command: str) -> str:
  rows = sweep.rows_of(results)
  meta = budget_meta(config, results, command)
  md = markdown(config, rows, results, meta)
  sweep.write_results(config.results_dir, "results", meta, rows, md)
  plot(config, rows, results, os.path.join(config.results_dir, "arch.png"))
  return md


if __name__ == "__main__":
  sweep.main("experiments.model_efficiency.arch", report, variants)
