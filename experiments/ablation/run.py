"""Runs the ablation and writes results.{json,md} and ablation.png to config.results_dir.

    python -m experiments.ablation.run --config experiments/ablation/config.py:cpu --workdir runs/ablation_cpu

Every (variant, seed) trains in `<workdir>/<variant>/seed<k>`; rerunning
skips finished runs and resumes an interrupted one (see experiments/sweep.py).
"""

from experiments import sweep

COMPONENTS = ("init", "grad", "kl")


def components_of(name: str):
  """The set of components a variant name switches on, or None for a sweep variant."""
  parts = set(name.split("+"))
  if name == "none":
    return frozenset()
  return frozenset(parts) if parts <= set(COMPONENTS) else None


def main_effects(rows: dict) -> dict:
  """Each component's effect on final kNN: mean over the 4 pairs that differ only in it.

  Per seed, so the spread over seeds is reported too. Needs all 8
  combinations with the same seeds; components whose pairs are missing
  are left out.
  """
  by_set = {components_of(n): r for n, r in rows.items() if components_of(n) is not None}
  effects = {}
  for c in COMPONENTS:
    pairs = [(by_set[s], by_set[s | {c}]) for s in by_set if c not in s and s | {c} in by_set]
    if len(pairs) != 4:
      continue
    seeds = set.intersection(*(set(r["seeds"]) for p in pairs for r in p))
    per_seed = []
    for seed in sorted(seeds):
      diffs = []
      for off, on in pairs:
        pick = lambda r: r["knn_top1"].values[r["seeds"].index(seed)]
        diffs.append(pick(on) - pick(off))
      per_seed.append(sum(diffs) / len(diffs))
    if per_seed:
      effects[c] = sweep.Stat(tuple(per_seed))
  return effects


def markdown(rows: dict, effects: dict, meta: dict) -> str:
  epochs = sorted({e for r in rows.values() for e in r["knn_top1_by_epoch"]} - {0})
  head = (["variant", "seeds", "kNN untrained"] + [f"kNN ep {e}" for e in epochs]
          + ["linear", "s/epoch"])
  table = []
  for name, r in rows.items():
    by_epoch = r["knn_top1_by_epoch"]
    table.append([name, len(r["seeds"]), by_epoch[0].pct()]
                 + [by_epoch[e].pct() if e in by_epoch else "-" for e in epochs]
                 + [r["linear_top1"].pct(), f"{r['seconds_per_epoch'].mean:.1f}"])
  out = [f"# Ablation: {meta['preset']} preset", "",
         f"Command: `{meta['command']}`", "",
         f"Device: {meta['device']}; data: {meta['dataset']} ({meta['num_train_examples']} train "
         f"images, {meta['num_test_examples']} test images); {meta['model']}; batch "
         f"{meta['batch_size']}; {meta['epochs']} epochs; seeds {meta['seeds']}. Top-1 in %, "
         f"mean ± half the range over seeds. `none` is NPID at temperature 0.1; "
         f"`init+grad+kl` is the method; the sweeps change one knob of the method.", "",
         sweep.markdown_table(head, table), ""]
  if effects:
    out += ["Effect of each component on the final kNN top-1 (mean over the four pairs of "
            "combinations that differ only in it; ± half the range over seeds):", "",
            sweep.markdown_table(["component", "kNN change (points)"],
                                 [[c, f"{100 * s.mean:+.2f} ± {100 * s.spread:.2f}"]
                                  for c, s in effects.items()]), ""]
  return "\n".join(out)


def plot(rows: dict, path: str) -> bool:
  plt = sweep.pyplot()
  if plt is None:
    return False
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
  for name, r in rows.items():
    if components_of(name) is None:
      continue
    epochs = sorted(r["knn_top1_by_epoch"])
    axes[0].plot(epochs, [100 * r["knn_top1_by_epoch"][e].mean for e in epochs], marker="o",
                 label=name, linewidth=2.5 if name == "init+grad+kl" else 1.2)
  axes[0].set_xlabel("epoch")
  axes[0].set_ylabel("kNN top-1 (%), mean over seeds")
  axes[0].legend(fontsize=8)
  names = list(rows)
  for i, name in enumerate(names):
    values = [100 * v for v in rows[name]["knn_top1"].values]
    axes[1].bar(i, sum(values) / len(values), color="C0" if components_of(name) is not None
                else "C1", alpha=0.6)
    axes[1].scatter([i] * len(values), values, color="k", s=10, zorder=3)
  axes[1].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
  lows = [100 * min(r["knn_top1"].values) for r in rows.values()]
  axes[1].set_ylim(min(lows) - 3, None)
  axes[1].set_ylabel("final kNN top-1 (%): bars mean, dots seeds")
  for ax in axes:
    ax.grid(alpha=0.3)
  sweep.save_figure(fig, path)
  return True


def report(config, results: dict, command: str) -> str:
  """Writes results.json, results.md and ablation.png; returns the Markdown."""
  rows = sweep.rows_of(results)
  effects = main_effects(rows)
  meta = sweep.describe(config, results, command)
  md = markdown(rows, effects, meta)
  sweep.write_results(config.results_dir, "results", {**meta, "effects": effects}, rows, md)
  plot(rows, f"{config.results_dir}/ablation.png")
  return md


if __name__ == "__main__":
  sweep.main("experiments.ablation.run", report)
