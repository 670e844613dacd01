"""Runs the bank-dtype comparison; writes results.{json,md} to config.results_dir.

    python -m experiments.bank_dtype.run --config experiments/bank_dtype/config.py:cpu --workdir runs/bank_dtype_cpu

Every (variant, seed) trains in `<workdir>/<variant>/seed<k>`; rerunning
skips finished runs and resumes an interrupted one (experiments/sweep/runs.py).
Besides each variant's accuracies, the table gives the per-seed difference
bf16 - float32 (both runs of a seed share everything else, data order included).
"""

from experiments import sweep

METRICS = (("knn_top1", "kNN top-1"), ("knn_top1_bank", "kNN against the bank"),
           ("linear_top1", "linear top-1"))


def paired_differences(results: dict) -> dict:
  """{metric: Stat of bfloat16 - float32 over the seeds both variants finished}."""
  runs = {name: {s["seed"]: s for s in results.get(name, [])} for name in ("float32", "bfloat16")}
  seeds = sorted(set(runs["float32"]) & set(runs["bfloat16"]))
  if not seeds:
    return {}
  return {key: sweep.Stat(tuple(runs["bfloat16"][s][key] - runs["float32"][s][key]
                                for s in seeds))
          for key, _ in METRICS if all(key in runs[v][s] for v in runs for s in seeds)}


def markdown(results: dict, rows: dict, diffs: dict, meta: dict) -> str:
  by_seed = lambda name, key: ", ".join(
      f"{100 * s[key]:.2f}" for s in sorted(results[name], key=lambda s: s["seed"]) if key in s)
  out = [f"# Bank dtype: {meta['preset']} preset", "",
         f"Command: `{meta['command']}`", "",
         f"Device: {meta['device']}; data: {meta['dataset']} ({meta['num_train_examples']} train "
         f"images, {meta['num_test_examples']} test images); {meta['model']}; batch "
         f"{meta['batch_size']}; {meta['epochs']} epochs; seeds {meta['seeds']}. Top-1 in %, "
         "mean ± half the range over seeds.", "",
         *sweep.fewer_seeds_in_rows(rows, meta["seeds"]),
         sweep.variants_table(rows), "",
         "Per seed (seeds in order):", "",
         sweep.markdown_table(["variant"] + [label for _, label in METRICS],
                              [[name] + [by_seed(name, key) for key, _ in METRICS]
                               for name in rows]), ""]
  if diffs:
    out += ["bfloat16 - float32, in points, per seed then mean ± half the range:", "",
            sweep.markdown_table(["metric", "per seed", "mean"], [
                [label, ", ".join(f"{100 * v:+.2f}" for v in diffs[key].values),
                 f"{100 * diffs[key].mean:+.2f} ± {100 * diffs[key].spread:.2f}"]
                for key, label in METRICS if key in diffs]), ""]
  return "\n".join(out)


def report(config, results: dict, command: str) -> str:
  """Writes results.json and results.md; returns the Markdown."""
  rows = sweep.rows_of(results)
  diffs = paired_differences(results)
  meta = sweep.describe(config, results, command)
  md = markdown(results, rows, diffs, meta)
  sweep.write_results(config.results_dir, "results", {**meta, "differences": diffs}, rows, md)
  return md


if __name__ == "__main__":
  sweep.main("experiments.bank_dtype.run", report)
