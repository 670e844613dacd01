"""Runs the label-efficiency experiment; writes results.{json,md} and lowshot.png.

    python -m experiments.lowshot.run --config experiments/lowshot/config.py:cpu --workdir runs/lowshot_cpu

One sweep (`experiments/sweep/`): per seed, ours and SimCLR pretrain in
`<workdir>/<method>/seed<k>`, then each is fine-tuned at every label fraction
in `<workdir>/<method>-ft-f<f>/seed<k>` (`init_from` names that seed's
pretrained run), and the supervised method trains from scratch in
`<workdir>/supervised-f<f>/seed<k>`. Finished runs are reused, an interrupted
one resumes, and with `config.records_dir` each leaves a record to commit.
"""

from __future__ import annotations

import math
import os

from experiments import sweep
from experiments.compare import flops as compare_flops
from ssl_jax import data as data_lib

CIFAR10_TRAIN, CLASSES = 50_000, 10   # the presets' data: CIFAR-10 (folder or TFDS)


def labelled(config, fraction: float) -> int:
  """Labelled training images at `fraction`: round(f N / C) a class (at least 1), C classes."""
  n = len(data_lib.subset_positions(CIFAR10_TRAIN, float(config.base.data.fraction), 0))
  return CLASSES * data_lib.labels_per_class(fraction, n, CLASSES)


def finetune_overrides(config, fraction: float) -> str:
  """The supervised run's fields at `fraction`: `finetune_steps` steps of a batch that
  splits the labelled images about evenly (at most `finetune_batch`, a multiple of 8 for
  the device counts), no weight decay."""
  n = labelled(config, fraction)
  batch = n // math.ceil(n / int(config.finetune_batch))
  batch -= batch % 8 if batch >= 8 else 0
  epochs = math.ceil(int(config.finetune_steps) / (n // batch))
  return (f"method=supervised data.label_fraction={fraction!r} train_flops=0.0 "
          f"num_epochs={epochs} batch_size={batch} optim.base_lr={config.finetune_lr!r} "
          f"optim.weight_decay=0.0 optim.warmup_epochs={max(1, round(epochs / 10))} "
          f"eval.label_fractions=() eval.every_epochs=0 "
          f"checkpoint_every_epochs={max(1, epochs // 4)}")


def variants(config) -> tuple:
  """Pretraining (the comparison's budget), fine-tuning at each fraction, and from scratch."""
  out = list(compare_flops.variants(config))
  for m in config.methods:
    for f in config.fractions:
      out.append((f"{m}-ft-f{f:g}",
                  finetune_overrides(config, f) + f" init_from={{workdir}}/{m}/seed{{seed}}"))
  for f in config.fractions:
    out.append((f"supervised-f{f:g}", finetune_overrides(config, f)))
  return tuple(out)


def _probe(summary: dict, fraction: float) -> float:
  """The pretrained run's linear probe on `fraction` of the labels, on its own seed's draw."""
  if fraction >= 1.0:
    return summary["linear_top1"]
  setting = summary["lowshot"][f"labels_{100 * fraction:g}%"]["linear_top1"]
  return setting["values"][summary["seed"]]


def table(config, results: dict) -> dict:
  """{row: {fraction: Stat over seeds}}: probes, fine-tunes and from-scratch runs."""
  stat = lambda xs: sweep.Stat(tuple(float(x) for x in xs)) if xs else None
  out = {}
  for m in config.methods:
    out[f"{m}: linear probe"] = {f: stat([_probe(s, f) for s in results.get(m, [])])
                                 for f in config.fractions}
    out[f"{m}: fine-tuned"] = {f: stat([s["classifier_top1"]
                                        for s in results.get(f"{m}-ft-f{f:g}", [])])
                               for f in config.fractions}
  out["supervised from scratch"] = {f: stat([s["classifier_top1"]
                                             for s in results.get(f"supervised-f{f:g}", [])])
                                    for f in config.fractions}
  return out


def markdown(config, rows: dict, results: dict, meta: dict) -> str:
  head = ["", *(f"{100 * f:g}% ({labelled(config, f)} labels)" for f in config.fractions)]
  body = [[name] + [c.pct() + ("" if len(c.values) == len(meta["seeds"]) else
                               f" ({len(c.values)} seeds)") if c else "-"
                    for c in cells.values()] for name, cells in rows.items()]
  return "\n".join([
      f"# Data efficiency in labels: {meta['preset']} preset", "",
      f"Command: `{meta['command']}`", "",
      f"Device: {meta['device']}; {meta['dataset']} ({meta['num_train_examples']} train images, "
      f"{meta['num_test_examples']} test images); {meta['model']}; seeds {meta['seeds']}. "
      f"Pretraining (ours, SimCLR): {config.budget:.4g} FLOPs per run (SimCLR's "
      f"{config.budget_epochs} epochs), no labels. A probe is the pretrained run's linear "
      f"probe fit on that many labels (the seed's own class-balanced draw); fine-tuned is the "
      f"supervised method started from the pretrained encoder, and from scratch the "
      f"supervised method alone, each {config.finetune_steps} steps on the same labelled "
      f"images (learning rate {config.finetune_lr}, cosine, no weight decay), scored by its "
      f"classifier. Test top-1 in % on all {meta['num_test_examples']} test images, mean ± "
      f"half the range over seeds.", "",
      sweep.markdown_table(head, body), ""])


def plot(config, rows: dict, path: str) -> bool:
  plt = sweep.pyplot()
  if plt is None:
    return False
  fig, ax = plt.subplots(figsize=(7, 4))
  for name, cells in rows.items():
    pts = [(100 * f, c) for f, c in cells.items() if c]
    if pts:
      ax.errorbar([p[0] for p in pts], [100 * c.mean for _, c in pts],
                  yerr=[100 * c.spread for _, c in pts], marker="o", capsize=3, label=name,
                  linestyle="--" if "probe" in name else "-")
  ax.set_xscale("log")
  ax.set_xlabel("% of the training labels")
  ax.set_ylabel("test top-1 (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  sweep.save_figure(fig, path)
  return True


def report(config, results: dict, command: str) -> str:
  rows = table(config, results)
  pretrained = {m: results[m] for m in config.methods if results.get(m)}
  meta = {**compare_flops.budget_meta(config, pretrained or results, command),
          "fractions": list(config.fractions), "finetune_steps": config.finetune_steps}
  md = markdown(config, rows, results, meta)
  sweep.write_results(config.results_dir, "results", meta,
                      {name: {f"{f:g}": c for f, c in cells.items() if c}
                       for name, cells in rows.items()}, md, key="rows")
  plot(config, rows, os.path.join(config.results_dir, "lowshot.png"))
  return md


if __name__ == "__main__":
  sweep.main("experiments.lowshot.run", report, variants)
