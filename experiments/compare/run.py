"""Runs every method of the comparison config and writes results.json, results.md and plots.

    python -m experiments.compare.run --config experiments/compare/config.py:cpu --workdir runs/compare_cpu

Each method trains in `<workdir>/<method>` (resumable: rerunning continues
an interrupted method and skips finished ones), then the table and plots
are written to `config.results_dir`.
"""

import copy
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from configs import default
from experiments import sweep
from ssl_jax import cli

config_flags.DEFINE_config_file("config", None, "experiments/compare/config.py:<preset>")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the runs of every method.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks instead of one-line errors.")
flags.mark_flags_as_required(["config", "workdir"])


def run_method(base, method: str, workdir: str) -> dict:
  """Trains one method, resumes it, or reads its finished summary (`sweep.run_one`: a
  workdir holding a run of another config is refused, not reused)."""
  if os.path.exists(os.path.join(workdir, "summary.json")):
    print(f"{method}: finished run found in {workdir}, not recomputed")
  return sweep.run_one(default.set_method(copy.deepcopy(base), method), workdir)


def table_rows(summaries: dict) -> list[dict]:
  rows = []
  for method, s in summaries.items():
    knn_by_epoch = {e: v for e, v in sweep.knn_by_epoch(s).items() if e}
    rows.append({"method": method, "knn_top1_init": s["knn_top1_init"],
                 "knn_top1_by_epoch": knn_by_epoch, "knn_top1": s["knn_top1"],
                 "linear_top1": s["linear_top1"], "seconds_per_epoch": s["seconds_per_epoch"],
                 "images_per_second": s["images_per_second"],
                 "peak_memory_bytes": s["peak_memory_bytes"]})
  return rows


def markdown(rows: list[dict], meta: dict) -> str:
  epochs = sorted({e for r in rows for e in r["knn_top1_by_epoch"]})
  head = (["method", "kNN untrained"] + [f"kNN ep {e}" for e in epochs]
          + ["linear", "s/epoch", "images/s", "peak memory"])
  pct = lambda v: f"{100 * v:.2f}" if v is not None else "-"
  cells = []
  for r in rows:
    mem = r["peak_memory_bytes"]
    cells.append([r["method"], pct(r["knn_top1_init"])]
                 + [pct(r["knn_top1_by_epoch"].get(e)) for e in epochs]
                 + [pct(r["linear_top1"]), f"{r['seconds_per_epoch']:.1f}",
                    f"{r['images_per_second']:.0f}", f"{mem / 2**30:.2f} GiB" if mem else "n/a"])
  out = [f"# Comparison: {meta['preset']} preset", "",
         f"Command: `{meta['command']}`", "",
         f"Device: {meta['device']}; data: {meta['dataset']} ({meta['num_train_examples']} "
         f"train images, {meta['num_test_examples']} test images, CIFAR-10 (JPEG)); "
         f"{meta['model']}; batch {meta['batch_size']}; {meta['epochs']} epochs. "
         f"Accuracies in %, top-1; images/s counts source images (a two-view step "
         f"augments and encodes each twice).", "", sweep.markdown_table(head, cells), ""]
  ratio = meta.get("ours_over_simclr_images_per_second")
  if ratio:
    out.append(f"Single-branch (ours) images per second over SimCLR's two-view step, same "
               f"batch of images, same run: **{ratio:.2f}x**.")
  return "\n".join(out) + "\n"


def plot(summaries: dict, path: str) -> bool:
  plt = sweep.pyplot()
  if plt is None:
    return False
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for method, s in summaries.items():
    knn, seconds = sweep.knn_by_epoch(s), sweep.seconds_by_epoch(s)
    epochs = sorted(knn)
    axes[0].plot(epochs, [100 * knn[e] for e in epochs], marker="o", label=method)
    axes[1].plot([seconds[e] for e in epochs], [100 * knn[e] for e in epochs], marker="o",
                 label=method)
  axes[0].set_xlabel("epoch")
  axes[1].set_xlabel("training seconds (excluding evaluation)")
  for ax in axes:
    ax.set_ylabel("kNN top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
  sweep.save_figure(fig, path)
  return True


def main(argv) -> None:
  cli.no_positional_arguments(argv)
  logging.set_verbosity(logging.WARNING)
  import jax
  config = flags.FLAGS.config
  workdir = _WORKDIR.value
  summaries = cli.run_guarded(
      lambda: {m: run_method(config.base, m, os.path.join(workdir, m)) for m in config.methods},
      _DEBUG.value)
  first = next(iter(summaries.values()))
  rows = table_rows(summaries)
  meta = {
      "preset": config.preset,
      "command": "python -m experiments.compare.run " + " ".join(sys.argv[1:]),
      "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "dataset": first["dataset"].split("/")[-1],
      "num_train_examples": first["num_train_examples"],
      "num_test_examples": first["num_test_examples"],
      "model": f"{config.base.model.name} width {config.base.model.width}",
      "batch_size": config.base.batch_size, "epochs": config.base.num_epochs,
  }
  if "ours" in summaries and "simclr" in summaries:
    meta["ours_over_simclr_images_per_second"] = (
        summaries["ours"]["images_per_second"] / summaries["simclr"]["images_per_second"])
  sweep.write_results(config.results_dir, "results", meta, rows, markdown(rows, meta),
                      key="methods")
  plot(summaries, os.path.join(config.results_dir, "knn.png"))
  print(markdown(rows, meta))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
