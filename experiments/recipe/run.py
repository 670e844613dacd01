"""Runs the recipe search; writes results.{json,md} and recipe.png to config.results_dir.

    python -m experiments.recipe.run --config experiments/recipe/config.py:cpu --workdir runs/recipe_cpu
"""

from experiments import sweep


def reference(rows: dict) -> str:
  """The variant the others are measured from: `default`, or the preset's first."""
  return "default" if "default" in rows else next(iter(rows))


def ranking(rows: dict, at_time: tuple) -> list[list[str]]:
  """Variants from best to worst final kNN, with the change from the reference's,
  their equal-time kNN and rank."""
  by_time = sorted(rows, key=lambda n: -at_time[1][n].mean)
  ordered = sorted(rows, key=lambda n: -rows[n]["knn_top1"].mean)
  ref = rows[reference(rows)]["knn_top1"].mean
  out = []
  for name in ordered:
    gain = f"{100 * (rows[name]['knn_top1'].mean - ref):+.2f}"
    out.append([name, rows[name]["knn_top1"].pct(), gain, at_time[1][name].pct(),
                str(by_time.index(name) + 1)])
  return out


def paired(rows: dict, a: str, b: str) -> dict[str, sweep.Stat]:
  """`a` minus `b` per seed (the seeds both finished): kNN at each evaluated epoch, linear.

  Pairing runs of the same seed (same initial network, data order and
  augmentation) removes the seed's own luck from the difference.
  """
  seeds = [s for s in rows[a]["seeds"] if s in rows[b]["seeds"]]
  if not seeds:
    return {}
  def diff(metric) -> sweep.Stat:
    pick = lambda row, seed: metric(row).values[row["seeds"].index(seed)]
    return sweep.Stat(tuple(pick(rows[a], s) - pick(rows[b], s) for s in seeds))
  epochs = sorted(set(rows[a]["knn_top1_by_epoch"]) & set(rows[b]["knn_top1_by_epoch"]) - {0})
  out = {f"kNN ep {e}": diff(lambda r, e=e: r["knn_top1_by_epoch"][e]) for e in epochs}
  out["linear"] = diff(lambda r: r["linear_top1"])
  return out


def pairs_table(config, rows: dict) -> tuple[dict, str]:
  """({"a - b": paired()}, Markdown) for the config's pairs whose variants both finished."""
  found = {f"{a} - {b}": paired(rows, a, b) for a, b in config.get("pairs", ())
           if a in rows and b in rows}
  found = {label: d for label, d in found.items() if d}
  if not found:
    return {}, ""
  labels = list(next(iter(found.values())))
  signed = lambda s: f"{100 * s.mean:+.2f} ± {100 * s.spread:.2f}"
  table = []
  for label, d in found.items():
    final = d[[m for m in d if m.startswith("kNN ep")][-1]]  # the last common evaluation
    table.append([label] + [signed(d[m]) if m in d else "-" for m in labels]
                 + [", ".join(f"{100 * v:+.2f}" for v in final.values),
                    f"{sum(v > 0 for v in final.values)} of {len(final.values)}"])
  md = sweep.markdown_table(["pair"] + labels + ["last kNN per seed", "seeds ahead"], table)
  return found, md


def markdown(rows: dict, at_time: tuple, meta: dict, pairs_md: str) -> str:
  pairs = (["Paired differences in points of top-1: the first variant minus the second, per "
            "seed, mean ± half the range over seeds:", "", pairs_md, ""] if pairs_md else [])
  return "\n".join([
      f"# Recipe search: {meta['preset']} preset", "",
      f"Command: `{meta['command']}`", "",
      f"Device: {meta['device']}; data: {meta['dataset']} ({meta['num_train_examples']} train "
      f"images, {meta['num_test_examples']} test images); {meta['model']}; batch "
      f"{meta['batch_size']}; {meta['epochs']} epochs unless the variant says otherwise; seeds "
      f"{meta['seeds']}. Top-1 in %, mean ± half the range over seeds. Equal wall-clock: kNN "
      f"after {at_time[0]:.0f} training seconds (the shortest run's), interpolated between "
      f"evaluations.", "",
      *sweep.fewer_seeds_in_rows(rows, meta["seeds"]),
      sweep.variants_table(rows, at_time), "",
      f"Ranked by final kNN (equal epochs), with the change from `{reference(rows)}` and the "
      "rank at equal wall-clock:", "",
      sweep.markdown_table(["variant", "final kNN", f"vs {reference(rows)} (points)",
                            f"kNN at {at_time[0]:.0f} s", "rank at equal time"],
                           ranking(rows, at_time)), ""] + pairs)


def report(config, results: dict, command: str) -> str:
  """Writes results.json, results.md and recipe.png; returns the Markdown."""
  rows = sweep.rows_of(results)
  at_time = sweep.equal_time(results)
  meta = sweep.describe(config, results, command)
  pairs, pairs_md = pairs_table(config, rows)
  md = markdown(rows, at_time, meta, pairs_md)
  sweep.write_results(config.results_dir, "results",
                      {**meta, "equal_time_seconds": at_time[0],
                       "knn_top1_at_equal_time": at_time[1], "pairs": pairs}, rows, md)
  sweep.variants_plot(rows, f"{config.results_dir}/recipe.png", list(rows), reference(rows))
  return md


if __name__ == "__main__":
  sweep.main("experiments.recipe.run", report)
