"""Runs the ablation and writes results.{json,md} and ablation.png to config.results_dir.

    python -m experiments.ablation.run --config experiments/ablation/config.py:cpu --workdir runs/ablation_cpu

Every (variant, seed) trains in `<workdir>/<variant>/seed<k>`; rerunning
skips finished runs and resumes an interrupted one (see experiments/sweep/runs.py).
"""

from experiments import sweep

COMPONENTS = ("init", "grad", "kl")


def components_of(name: str):
  """The set of components a variant name switches on, or None for a sweep variant."""
  parts = set(name.split("+"))
  if name == "none":
    return frozenset()
  return frozenset(parts) if parts <= set(COMPONENTS) else None


def main_effects(rows: dict, metric=lambda r: r["knn_top1"]) -> dict:
  """Each component's effect on `metric`: mean over the 4 pairs that differ only in it.

  `metric(row)` is a Stat over seeds (default: the final kNN top-1). Per
  seed, so the spread over seeds is reported too. Needs all 8 combinations
  with a common seed; components whose pairs are missing are left out.
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
        pick = lambda r: metric(r).values[r["seeds"].index(seed)]
        diffs.append(pick(on) - pick(off))
      per_seed.append(sum(diffs) / len(diffs))
    if per_seed:
      effects[c] = sweep.Stat(tuple(per_seed))
  return effects


def _common_seeds(rows: dict) -> list[int]:
  combos = [r for n, r in rows.items() if components_of(n) is not None]
  return sorted(set.intersection(*(set(r["seeds"]) for r in combos))) if combos else []


def effects_by_metric(rows: dict) -> dict[str, dict]:
  """{metric label: main_effects} for kNN at every evaluated epoch and the linear probe."""
  combos = [r for n, r in rows.items() if components_of(n) is not None]
  if not combos:
    return {}
  epochs = sorted(set.intersection(*(set(r["knn_top1_by_epoch"]) for r in combos)) - {0})
  out = {f"kNN ep {e}": main_effects(rows, lambda r, e=e: r["knn_top1_by_epoch"][e])
         for e in epochs}
  out["linear"] = main_effects(rows, lambda r: r["linear_top1"])
  return {label: e for label, e in out.items() if e}


def markdown(rows: dict, effects: dict, meta: dict) -> str:
  out = [f"# Ablation: {meta['preset']} preset", "",
         f"Command: `{meta['command']}`", "",
         f"Device: {meta['device']}; data: {meta['dataset']} ({meta['num_train_examples']} train "
         f"images, {meta['num_test_examples']} test images); {meta['model']}; batch "
         f"{meta['batch_size']}; {meta['epochs']} epochs; seeds {meta['seeds']}. Top-1 in %, "
         f"mean ± half the range over seeds. `none` is NPID at temperature 0.1; "
         f"`init+grad+kl` is the method; the sweeps change one knob of the method. "
         f"s/epoch is as measured, on a machine that may have run other work alongside: "
         f"step costs are measured by `benchmarks/`, and the claims tested here are about "
         f"epochs.", "",
         *(["`tau=...+rule` sets `bank.lr` to the configs' rule B tau / 2 for its "
            "temperature; `tau=0.05` and `tau=0.2` keep the method's `bank.lr`, so their "
            "bank step is 2x and 0.5x the rule's.", ""]
           if any(n.endswith("+rule") for n in rows) else []),
         *sweep.fewer_seeds_in_rows(rows, meta["seeds"]),
         sweep.variants_table(rows), ""]
  if effects:
    labels = list(effects)
    out += ["Effect of switching each component on, in points of top-1: the mean over the "
            "four pairs of combinations that differ only in it, per seed; ± half the range "
            f"over seeds {_common_seeds(rows)}:",
            "",
            sweep.markdown_table(["component"] + labels, [
                [c] + [f"{100 * effects[m][c].mean:+.2f} ± {100 * effects[m][c].spread:.2f}"
                       if c in effects[m] else "-" for m in labels] for c in COMPONENTS]), ""]
  return "\n".join(out)


def report(config, results: dict, command: str) -> str:
  """Writes results.json, results.md and ablation.png; returns the Markdown."""
  rows = sweep.rows_of(results)
  effects = effects_by_metric(rows)
  meta = sweep.describe(config, results, command)
  md = markdown(rows, effects, meta)
  sweep.write_results(config.results_dir, "results", {**meta, "effects": effects}, rows, md)
  combos = [n for n in rows if components_of(n) is not None]
  # The eight combinations' curves; a preset without them (cpu_tau) plots all its rows.
  curves = combos if len(combos) > 1 else list(rows)
  sweep.variants_plot(rows, f"{config.results_dir}/ablation.png", curves, "init+grad+kl")
  return md


if __name__ == "__main__":
  sweep.main("experiments.ablation.run", report)
