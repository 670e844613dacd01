"""Runs the recipe search; writes results.{json,md} and recipe.png to config.results_dir.

    python -m experiments.recipe.run --config experiments/recipe/config.py:cpu --workdir runs/recipe_cpu
"""

from experiments import sweep


def ranking(rows: dict, at_time: tuple) -> list[list[str]]:
  """Variants from best to worst final kNN, with their equal-time kNN and rank."""
  by_time = sorted(rows, key=lambda n: -at_time[1][n].mean)
  ordered = sorted(rows, key=lambda n: -rows[n]["knn_top1"].mean)
  default = rows.get("default")
  out = []
  for name in ordered:
    gain = (f"{100 * (rows[name]['knn_top1'].mean - default['knn_top1'].mean):+.2f}"
            if default else "-")
    out.append([name, rows[name]["knn_top1"].pct(), gain, at_time[1][name].pct(),
                str(by_time.index(name) + 1)])
  return out


def markdown(config, rows: dict, at_time: tuple, meta: dict) -> str:
  return "\n".join([
      f"# Recipe search: {meta['preset']} preset", "",
      f"Command: `{meta['command']}`", "",
      f"Device: {meta['device']}; data: {meta['dataset']} ({meta['num_train_examples']} train "
      f"images, {meta['num_test_examples']} test images); {meta['model']}; batch "
      f"{meta['batch_size']}; {meta['epochs']} epochs unless the variant says otherwise; seeds "
      f"{meta['seeds']}. Top-1 in %, mean ± half the range over seeds. Equal wall-clock: kNN "
      f"after {at_time[0]:.0f} training seconds (the shortest run's), interpolated between "
      f"evaluations.", "",
      sweep.variants_table(rows, at_time), "",
      "Ranked by final kNN (equal epochs), with the change from `default` and the rank at "
      "equal wall-clock:", "",
      sweep.markdown_table(["variant", "final kNN", "vs default (points)",
                            f"kNN at {at_time[0]:.0f} s", "rank at equal time"],
                           ranking(rows, at_time)), ""])


def report(config, results: dict, command: str) -> str:
  """Writes results.json, results.md and recipe.png; returns the Markdown."""
  rows = sweep.rows_of(results)
  at_time = sweep.equal_time(results)
  meta = sweep.describe(config, results, command)
  md = markdown(config, rows, at_time, meta)
  sweep.write_results(config.results_dir, "results",
                      {**meta, "equal_time_seconds": at_time[0],
                       "knn_top1_at_equal_time": at_time[1]}, rows, md)
  sweep.variants_plot(rows, f"{config.results_dir}/recipe.png", list(rows), "default")
  return md


if __name__ == "__main__":
  sweep.main("experiments.recipe.run", report)
