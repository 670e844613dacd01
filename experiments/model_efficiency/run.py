"""Runs the model-efficiency sweep; writes results.{json,md} and model_efficiency.png.

    python -m experiments.model_efficiency.run --config experiments/model_efficiency/config.py:cpu --workdir runs/model_cpu

Every (method, backbone, seed) trains in `<workdir>/<method>-<model>-w<width>/seed<k>`;
rerunning skips finished runs and resumes an interrupted one.
"""

from experiments import sweep
from experiments.model_efficiency import config as config_lib


def markdown(config, rows: dict, meta: dict) -> str:
  backbones, methods = [tuple(b) for b in config.backbones], list(config.methods)
  name = lambda m, b: config_lib.variant_name(m, b[0], b[1])
  params = {b: next((r["num_params"]["backbone"] for m in methods
                     if (r := rows.get(name(m, b)))), None) for b in backbones}
  head = ["method"] + [f"{b[0]} w{b[1]:g} ({params[b] / 1e6:.2f}M)" if params[b]
                       else f"{b[0]} w{b[1]:g}" for b in backbones]

  def table(fmt):
    return sweep.markdown_table(head, [[m] + [fmt(rows[name(m, b)]) if name(m, b) in rows
                                              else "-" for b in backbones] for m in methods])

  out = [f"# Model efficiency: {meta['preset']} preset", "",
         f"Command: `{meta['command']}`", "",
         f"Device: {meta['device']}; {meta['dataset']} ({meta['num_train_examples']} train "
         f"images, {meta['num_test_examples']} test images); batch {meta['batch_size']}; "
         f"{meta['epochs']} epochs; seeds {meta['seeds']}. Columns: backbone and its parameter "
         f"count (backbone only). Top-1 in %, mean ± half the range over seeds.", "",
         *fewer_seeds(config, rows, meta),
         "kNN top-1:", "", table(lambda r: r["knn_top1"].pct()), "",
         "Linear probe top-1:", "", table(lambda r: r["linear_top1"].pct()), "",
         "Training seconds (all epochs, evaluation excluded, compilation included):", "",
         table(lambda r: f"{r['training_seconds'].mean:.0f}"), ""]
  if "ours" in methods:
    lead = []
    for m in methods:
      if m != "ours":
        lead.append([f"ours - {m}"] + [
            sweep.knn_lead(rows[name("ours", b)], rows[name(m, b)])
            if name("ours", b) in rows and name(m, b) in rows else "-" for b in backbones])
    out += ["kNN lead of ours (points, mean over seeds, then each seed's in brackets):", "",
            sweep.markdown_table(["vs"] + head[1:], lead), ""]
  return "\n".join(out)


def fewer_seeds(config, rows: dict, meta: dict) -> list[str]:
  """sweep.fewer_seeds over the backbone columns, the methods their members."""
  columns = {f"{name} w{width:g}": {m: r for m in config.methods
                                    if (r := rows.get(config_lib.variant_name(m, name, width)))}
             for name, width in config.backbones}
  return sweep.fewer_seeds(columns, meta["seeds"], "columns")


def plot(config, rows: dict, path: str) -> bool:
  plt = sweep.pyplot()
  if plt is None:
    return False
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for m in config.methods:
    pts = [rows[n] for name, width in config.backbones
           if (n := config_lib.variant_name(m, name, width)) in rows]
    if not pts:
      continue
    knn = [100 * r["knn_top1"].mean for r in pts]
    err = [100 * r["knn_top1"].spread for r in pts]
    axes[0].errorbar([r["num_params"]["backbone"] for r in pts], knn, yerr=err, marker="o",
                     capsize=3, label=m)
    axes[1].errorbar([r["training_seconds"].mean for r in pts], knn, yerr=err, marker="o",
                     capsize=3, label=m)
  axes[0].set_xlabel("backbone parameters")
  axes[1].set_xlabel("training seconds (evaluation excluded)")
  for ax in axes:
    ax.set_xscale("log")
    # Minor-tick labels of a log axis spanning less than a decade overlap.
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_ylabel("kNN top-1 (%)")
    ax.grid(alpha=0.3)
  # One legend beside the plots: inside, it hid the points at the largest backbone.
  axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
  sweep.save_figure(fig, path)
  return True


def report(config, results: dict, command: str) -> str:
  return sweep.write_report(config, results, command, markdown, plot, "model_efficiency.png")


if __name__ == "__main__":
  sweep.main("experiments.model_efficiency.run", report, config_lib.variants)
