"""Runs the data-efficiency sweep; writes results.{json,md} and data_efficiency.png.

    python -m experiments.data_efficiency.run --config experiments/data_efficiency/config.py:cpu --workdir runs/data_cpu

Every (method, fraction, seed) trains in `<workdir>/<method>-f<fraction>/seed<k>`;
rerunning skips finished runs and resumes an interrupted one.
"""

from experiments import sweep
from experiments.data_efficiency import config as config_lib


def _label(method: str, scale: float) -> str:
  return method if scale == 1.0 else f"{method} (bank lr x{scale:g})"


def markdown(config, rows: dict, meta: dict) -> str:
  fractions, table_rows = list(config.fractions), config_lib.rows(config)
  name = config_lib.variant_name
  cell = lambda m, x, f, key: (rows[name(m, f, x)][key].pct() if name(m, f, x) in rows
                               else "-")

  def knn(m, x, f):
    found = cell(m, x, f, "knn_top1")
    return found if found == "-" else (
        f"{found} ({rows[name(m, f, x)]['knn_top1_by_epoch'][0].pct()})")
  images = {f: next((r["num_train_examples"] for n, r in rows.items()
                     if n.endswith(f"-f{f:g}")), None) for f in fractions}
  head = ["method"] + [f"{100 * f:g}% ({images[f] or '?'} images)" for f in fractions]
  out = [f"# Data efficiency: {meta['preset']} preset", "",
         f"Command: `{meta['command']}`", "",
         f"Device: {meta['device']}; {meta['dataset']}, fixed seeded subsets of the train split, "
         f"evaluated on all {meta['num_test_examples']} test images (the kNN bank and the linear "
         f"probe's training set are the subset); {meta['model']}; batch {meta['batch_size']}; "
         f"{config.steps} steps for every run (epochs scale with 1/fraction); seeds "
         f"{meta['seeds']}. Top-1 in %, mean ± half the range over seeds.", "",
         *sweep.fewer_seeds({f"{100 * f:g}%": {_label(m, x): r for m, x in table_rows
                                               if (r := rows.get(name(m, f, x)))}
                             for f in fractions}, meta["seeds"], "columns"),
         "kNN top-1 (the untrained network's, the floor to beat, in brackets):", "",
         sweep.markdown_table(head, [[_label(m, x)] + [knn(m, x, f) for f in fractions]
                                     for m, x in table_rows]), "",
         "Linear probe top-1:", "",
         sweep.markdown_table(head, [[_label(m, x)] + [cell(m, x, f, "linear_top1")
                                                       for f in fractions]
                                     for m, x in table_rows]), ""]
  methods = list(config.methods)
  if "ours" in methods and len(methods) > 1:
    lead = []
    for m in methods:
      if m == "ours":
        continue
      cells = []
      for f in fractions:
        a, b = rows.get(name("ours", f)), rows.get(name(m, f))
        cells.append(f"{100 * (a['knn_top1'].mean - b['knn_top1'].mean):+.2f}"
                     if a and b else "-")
      lead.append([f"ours - {m}"] + cells)
    out += ["kNN lead of ours (points, means over seeds):", "",
            sweep.markdown_table(["vs"] + head[1:], lead), ""]
  return "\n".join(out)


def plot(config, rows: dict, path: str) -> bool:
  plt = sweep.pyplot()
  if plt is None:
    return False
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for key, ax in zip(("knn_top1", "linear_top1"), axes):
    for m, x in config_lib.rows(config):
      pts = [(100 * f, rows[n][key]) for f in config.fractions
             if (n := config_lib.variant_name(m, f, x)) in rows]
      if pts:
        ax.errorbar([p[0] for p in pts], [100 * s.mean for _, s in pts],
                    yerr=[100 * s.spread for _, s in pts], marker="o", capsize=3,
                    label=_label(m, x), linestyle="-" if x == 1.0 else "--")
    ax.set_xscale("log")
    ax.set_xlabel("% of the CIFAR-10 train split")
    ax.set_ylabel(f"{'kNN' if key == 'knn_top1' else 'linear'} top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
  sweep.save_figure(fig, path)
  return True


def report(config, results: dict, command: str) -> str:
  return sweep.write_report(config, results, command, markdown, plot, "data_efficiency.png")


if __name__ == "__main__":
  sweep.main("experiments.data_efficiency.run", report, config_lib.variants)
