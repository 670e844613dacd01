"""Variants x seeds of one base config: resumable runs and their aggregate.

An experiment config (e.g. `experiments/ablation/config.py`) holds

    config.base      the training config every run starts from
    config.variants  ((name, "field=value field=value ..."), ...)
    config.seeds     (0, 1, ...)

A variant's overrides are ml-collections field assignments, written as on
the command line without `--config.`, separated by spaces (so no spaces
inside a value): `"loss.kl_weight=0.5 augment.crop_scale=(0.08,1.0)"`.
`method=npid` is applied first through `configs.default.set_method` (which
sets that method's defining fields); the other assignments follow it.

Each (variant, seed) trains in `<workdir>/<variant>/seed<k>`. A finished run
(its summary.json exists) is never recomputed and an interrupted one resumes;
either way the run's saved config.json must equal the config asked for
(ignoring fields that only say where files are), so a changed sweep cannot
silently reuse runs made under other settings.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence

import ml_collections

from configs import default
from ssl_jax import methods

# Fields that say where things are or how often to log, not what is trained.
IGNORED_FIELDS = ("data.source_reason", "data.cache_dir", "data.tfds_data_dir",
                  "log_every_steps", "checkpoint_every_epochs", "checkpoint_every_steps",
                  "keep_checkpoints")
_NAME = re.compile(r"^[A-Za-z0-9_.=+-]+$")


class SweepError(ValueError):
  """A sweep config or a run directory that cannot be used."""


@dataclasses.dataclass(frozen=True)
class Variant:
  """One point of a sweep: a name and its field assignments (in order)."""
  name: str
  overrides: tuple[tuple[str, Any], ...]

  def get(self, field: str, default_value: Any = None) -> Any:
    return dict(self.overrides).get(field, default_value)


def _field(config: ml_collections.ConfigDict, dotted: str):
  node = config
  *path, leaf = dotted.split(".")
  for part in path:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise SweepError(f"config has no field {dotted!r} (no section {part!r}).")
    node = node[part]
  if leaf not in node:
    raise SweepError(f"config has no field {dotted!r}.")
  return node, leaf


def parse_value(text: str, current: Any) -> Any:
  """Converts `text` to the type of the field's current value, as config flags do."""
  if isinstance(current, bool):
    if text.lower() not in ("true", "false"):
      raise SweepError(f"expected true or false, got {text!r}.")
    return text.lower() == "true"
  if isinstance(current, str) or current is None:
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    raise SweepError(f"cannot read {text!r} as a {type(current).__name__}.") from e
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if not isinstance(value, type(current)):
    raise SweepError(f"{text!r} is a {type(value).__name__}, the field holds a "
                     f"{type(current).__name__}.")
  return value


def parse_variants(spec: Sequence[Sequence[str]],
                   base: ml_collections.ConfigDict) -> list[Variant]:
  """Reads config.variants, checking every name, field and value against `base`."""
  variants, names = [], set()
  for entry in spec:
    if len(entry) != 2:
      raise SweepError(f"a variant is (name, 'field=value ...'), got {entry!r}.")
    name, text = entry
    if not _NAME.match(name):
      raise SweepError(f"variant name {name!r} is not a folder name "
                       f"(letters, digits and _ . = + - only).")
    if name in names:
      raise SweepError(f"variant {name!r} appears twice.")
    names.add(name)
    overrides = []
    for item in text.split():
      field, sep, value = item.partition("=")
      if not sep:
        raise SweepError(f"variant {name!r}: {item!r} is not field=value.")
      if field == "method":
        if value not in methods.names():
          raise SweepError(f"variant {name!r}: method must be one of {list(methods.names())}, "
                           f"got {value!r}.")
        overrides.append((field, value))
        continue
      node, leaf = _field(base, field)
      try:
        overrides.append((field, parse_value(value, node[leaf])))
      except SweepError as e:
        raise SweepError(f"variant {name!r}, field {field}: {e}") from None
    variants.append(Variant(name, tuple(overrides)))
  if not variants:
    raise SweepError("config.variants is empty.")
  return variants


def variant_config(base: ml_collections.ConfigDict, variant: Variant,
                   seed: int) -> ml_collections.ConfigDict:
  """The training config of one run: base, then the method, then the overrides, then seed."""
  config = copy.deepcopy(base)
  config.unlock()
  method = variant.get("method")
  if method is not None:
    config = default.set_method(config, method)
  for field, value in variant.overrides:
    if field != "method":
      node, leaf = _field(config, field)
      node[leaf] = value
  config.seed = seed
  return config


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def config_differences(saved: dict, wanted: ml_collections.ConfigDict) -> list[str]:
  """Fields (other than IGNORED_FIELDS) where a run's config.json differs from `wanted`.

  `data.source` is compared by its kind and file name, so a run made from
  another checkout of the same archive still counts. A field the run's
  config lacks (added to the library after the run) matches when the sweep
  wants its default, which by this library's rule keeps the old behaviour.
  """
  a = _flatten(saved)
  b = _flatten(json.loads(wanted.to_json_best_effort()))
  defaults = _flatten(json.loads(default.get_config().to_json_best_effort()))
  diffs = []
  for field in sorted(set(a) | set(b)):
    if field in IGNORED_FIELDS:
      continue
    x, y = a.get(field, "<absent>"), b.get(field, "<absent>")
    if field not in a and field in defaults and y == defaults[field]:
      continue
    if field == "data.source" and isinstance(x, str) and isinstance(y, str):
      x, y = os.path.basename(x), os.path.basename(y)
    if x != y:
      diffs.append(f"{field}: run has {x!r}, sweep wants {y!r}")
  return diffs


def run_one(config: ml_collections.ConfigDict, workdir: str,
            train_fn: Optional[Callable] = None) -> dict:
  """Trains one run, resumes it, or reads its finished summary."""
  saved_path = os.path.join(workdir, "config.json")
  if os.path.exists(saved_path):
    with open(saved_path) as f:
      diffs = config_differences(json.load(f), config)
    if diffs:
      raise SweepError(f"{workdir} holds a run made with another config ("
                       + "; ".join(diffs[:5]) + (" ..." if len(diffs) > 5 else "")
                       + "). Delete that folder or use another --workdir.")
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      return json.load(f)
  if train_fn is None:
    from ssl_jax import train  # heavy: only when something is trained
    train_fn = train.train_and_evaluate
  return train_fn(config, workdir)


def run_sweep(config: ml_collections.ConfigDict, workdir: str, log=print,
              train_fn: Optional[Callable] = None) -> dict[str, list[dict]]:
  """Runs every (variant, seed) of an experiment config, in seed-major order.

  Seed-major: every variant gets its first seed before any gets its second,
  so an experiment stopped half-way still has one complete comparison.
  With `config.only_finished` nothing is trained: the finished runs are
  reported (a look at a long sweep while it runs).
  Returns {variant name: [summary per seed]} with `num_params` and `seed` added.
  """
  variants = parse_variants(config.variants, config.base)
  seeds = tuple(config.seeds)
  if not seeds:
    raise SweepError("config.seeds is empty.")
  results: dict[str, list[dict]] = {v.name: [] for v in variants}
  total, done = len(variants) * len(seeds), 0
  for seed in seeds:
    for v in variants:
      done += 1
      run_dir = os.path.join(workdir, v.name, f"seed{seed}")
      finished = os.path.exists(os.path.join(run_dir, "summary.json"))
      if not finished and config.get("only_finished", False):
        log(f"[{done}/{total}] {v.name} seed {seed}: not finished, left out")
        continue
      log(f"[{done}/{total}] {v.name} seed {seed}: "
          f"{'finished' if finished else 'training'} ({run_dir})")
      run_config = variant_config(config.base, v, seed)
      summary = dict(run_one(run_config, run_dir, train_fn))
      summary.setdefault("num_params", count_params(run_config))
      summary["seed"] = seed
      results[v.name].append(summary)
  if not any(results.values()):
    # Only reachable with only_finished: there is nothing to report yet.
    raise SweepError(f"no run under {workdir} has finished yet (config.only_finished=True "
                     "reports finished runs only); run without it to train them.")
  return results


def count_params(config: ml_collections.ConfigDict) -> dict:
  """Parameter counts {backbone, total} of a config's model, without computing anything."""
  import jax
  import jax.numpy as jnp
  from ssl_jax import builders
  model = builders.build_model(config, bn_axis_name=None)
  shape = (1, config.data.image_size, config.data.image_size, 3)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros(shape), train=False))
  params = variables["params"]
  size = lambda tree: int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
  backbone = params.get("backbone", params)
  return {"backbone": size(backbone), "total": size(params)}


# ---------------------------------------------------------------- configs


def preset_base(preset: str) -> ml_collections.ConfigDict:
  """The unlocked training config a preset starts from.

  cpu: configs/quickstart.py (ResNet-18 width 1/4, 5,000 CIFAR-10 images,
  batch 256); gpu: configs/cifar10.py (ResNet-18 bf16, all 50,000, batch 512).
  """
  from configs import cifar10, quickstart
  if preset == "cpu":
    base = quickstart.get_config()
  elif preset == "gpu":
    base = cifar10.get_config()
  else:
    raise ValueError(f"preset must be 'cpu' or 'gpu', got {preset!r}.")
  base.unlock()
  return base


def experiment_config(name: str, preset: str,
                      base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An experiment config: base, seeds (0, 1), only_finished, results_dir, preset."""
  config = ml_collections.ConfigDict()
  config.base = base
  config.seeds = (0, 1)
  # True: report the finished runs, train nothing (a look while the sweep runs).
  config.only_finished = False
  config.results_dir = f"experiments/{name}/{preset}"
  config.preset = preset
  return config


# ---------------------------------------------------------------- aggregation


def training_seconds(summary: dict) -> float:
  """Seconds spent in training steps (evaluation excluded), compilation included."""
  if "train_seconds" in summary:
    return float(summary["train_seconds"])
  return float(sum(r["epoch_seconds"] for r in summary["history"]))  # older summaries


def knn_by_epoch(summary: dict) -> dict[int, float]:
  """{epoch: kNN top-1}, with epoch 0 the untrained network and the final epoch."""
  out = {0: summary["knn_top1_init"]}
  out.update({r["epoch"]: r["knn_top1"] for r in summary["history"] if "knn_top1" in r})
  out[summary["epochs"]] = summary["knn_top1"]
  return out


def seconds_by_epoch(summary: dict) -> dict[int, float]:
  """{epoch: training seconds up to the end of that epoch}, with 0 at epoch 0."""
  out, elapsed = {0: 0.0}, 0.0
  for r in summary["history"]:
    elapsed += r["epoch_seconds"]
    out[r["epoch"]] = elapsed
  return out


def knn_at_seconds(summary: dict, budget: float) -> float:
  """kNN top-1 after `budget` training seconds, interpolated between evaluations.

  A run that finished within the budget keeps its final accuracy.
  """
  seconds = seconds_by_epoch(summary)
  points = sorted((seconds[e], knn) for e, knn in knn_by_epoch(summary).items())
  if budget >= points[-1][0]:
    return points[-1][1]
  for (t0, a0), (t1, a1) in zip(points, points[1:]):
    if t0 <= budget <= t1:
      return a0 + (a1 - a0) * (budget - t0) / (t1 - t0) if t1 > t0 else a1
  return points[0][1]


def equal_time(results: dict[str, list[dict]]) -> tuple[float, dict[str, "Stat"]]:
  """(budget, {variant: kNN after budget seconds}) with the budget the shortest run's time.

  Compares variants at equal wall-clock: a variant with a slower step has
  done fewer epochs by then.
  """
  runs = [s for ss in results.values() for s in ss]
  budget = min(training_seconds(s) for s in runs)
  return budget, {name: Stat(tuple(knn_at_seconds(s, budget) for s in ss))
                  for name, ss in results.items() if ss}


@dataclasses.dataclass(frozen=True)
class Stat:
  """A metric over seeds."""
  values: tuple[float, ...]

  @property
  def mean(self) -> float:
    return sum(self.values) / len(self.values)

  @property
  def spread(self) -> float:
    """Half the range over seeds (0 for one seed)."""
    return (max(self.values) - min(self.values)) / 2

  def to_json(self) -> dict:
    return {"mean": self.mean, "min": min(self.values), "max": max(self.values),
            "values": list(self.values)}

  def pct(self) -> str:
    if len(self.values) == 1:
      return f"{100 * self.mean:.2f}"
    return f"{100 * self.mean:.2f} ± {100 * self.spread:.2f}"


def aggregate(summaries: list[dict]) -> dict:
  """Mean and spread over seeds of one variant's accuracies and costs."""
  stat = lambda xs: Stat(tuple(float(x) for x in xs))
  epochs = sorted(set.intersection(*(set(knn_by_epoch(s)) for s in summaries)))
  return {
      "seconds_by_epoch": {e: stat(seconds_by_epoch(s)[e] for s in summaries) for e in epochs},
      "seeds": [s["seed"] for s in summaries],
      "num_train_examples": summaries[0]["num_train_examples"],
      "num_params": summaries[0]["num_params"],
      "knn_top1_by_epoch": {e: stat(knn_by_epoch(s)[e] for s in summaries) for e in epochs},
      "knn_top1": stat(s["knn_top1"] for s in summaries),
      "linear_top1": stat(s["linear_top1"] for s in summaries),
      "seconds_per_epoch": stat(s["seconds_per_epoch"] for s in summaries),
      "images_per_second": stat(s["images_per_second"] for s in summaries),
      "training_seconds": stat(training_seconds(s) for s in summaries),
  }


def to_json(obj):
  """JSON-ready copy of aggregate() output (Stat objects become dicts)."""
  if isinstance(obj, Stat):
    return obj.to_json()
  if isinstance(obj, dict):
    return {str(k): to_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_json(v) for v in obj]
  return obj


def knn_lead(row: dict, other: dict) -> str:
  """kNN points `row` leads `other` by: the mean, then each seed's in brackets.

  Per-seed leads pair the two rows' runs of the same seed, so they show whether
  a lead is larger than the run-to-run noise; where the rows' finished seeds
  differ (or there is one), the mean alone.
  """
  mean = f"{100 * (row['knn_top1'].mean - other['knn_top1'].mean):+.2f}"
  if list(row["seeds"]) != list(other["seeds"]) or len(row["seeds"]) < 2:
    return mean
  per_seed = ", ".join(f"{100 * (a - b):+.2f}" for a, b in
                       zip(row["knn_top1"].values, other["knn_top1"].values))
  return f"{mean} ({per_seed})"


def fewer_seeds(groups: dict[str, dict[str, dict]], seeds: Sequence[int], noun: str) -> list[str]:
  """A line naming each group of rows that has fewer finished seeds than `seeds`.

  A partial report (`only_finished`) lists every seed that finished in its
  header; a row with one seed shows no ± (and its leads no per-seed values),
  and this line says why. `groups` maps a group's label (a table column, or a
  row) to {member label: aggregate() row}; a group whose members all lack
  the same seeds is named once ("resnet18 w0.5: seed 0 only"), otherwise
  member by member. Returns [] when every row has every seed.
  """
  every = list(seeds)
  seeds_text = lambda ss: f"seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))}"
  notes = []
  for label, members in groups.items():
    have = {m: list(r["seeds"]) for m, r in members.items()}
    short = {m: ss for m, ss in have.items() if ss != every}
    if not short:
      continue
    if short == have and len({tuple(ss) for ss in short.values()}) == 1:
      detail = f"{seeds_text(next(iter(short.values())))} only"
    else:
      detail = ", ".join(f"{m} {seeds_text(ss)} only" for m, ss in short.items())
    notes.append(f"{label}: {detail}")
  return [f"Fewer seeds finished in some {noun}: {'; '.join(notes)}.", ""] if notes else []


def fewer_seeds_in_rows(rows: dict[str, dict], seeds: Sequence[int]) -> list[str]:
  """`fewer_seeds` for a table whose rows are the variants (ablation, recipe)."""
  return fewer_seeds({name: {name: row} for name, row in rows.items()}, seeds, "rows")


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def describe(config: ml_collections.ConfigDict, results: dict[str, list[dict]],
             command: str) -> dict:
  """What every table states under it: command, device, data, model, schedule, seeds."""
  from ssl_jax import devices
  finished = [s for runs in results.values() for s in runs]
  if not finished:
    raise SweepError("no finished run to report.")
  first = finished[0]
  base = config.base
  return {
      "preset": config.preset, "command": command,
      "device": devices.describe(),
      "dataset": os.path.basename(first["dataset"]),
      "num_train_examples": first["num_train_examples"],
      "num_test_examples": first["num_test_examples"],
      "model": f"{base.model.name} width {base.model.width}",
      "batch_size": base.batch_size, "epochs": base.num_epochs,
      # The seeds that finished, not the ones asked for: a partial report
      # (only_finished) must not claim seeds it does not have.
      "seeds": sorted({s["seed"] for s in finished}),
  }


def write_results(results_dir: str, name: str, meta: dict, rows: dict, md: str,
                  key: str = "variants") -> None:
  """`<name>.json` ({'meta', key: rows}) and `<name>.md`, each written whole (atomically)."""
  from ssl_jax import run_files
  os.makedirs(results_dir, exist_ok=True)
  run_files.write_text_atomic(os.path.join(results_dir, f"{name}.json"),
                              json.dumps(to_json({"meta": meta, key: rows}), indent=2))
  run_files.write_text_atomic(os.path.join(results_dir, f"{name}.md"), md)


def variants_table(rows: dict[str, dict], at_time: Optional[tuple[float, dict]] = None) -> str:
  """Markdown: per variant, seeds, kNN at every evaluated epoch, linear, s/epoch.

  `at_time` = equal_time(results) adds the kNN at that training-seconds budget.
  """
  epochs = sorted({e for r in rows.values() for e in r["knn_top1_by_epoch"]} - {0})
  head = (["variant", "seeds", "kNN untrained"] + [f"kNN ep {e}" for e in epochs]
          + ["linear", "s/epoch"])
  if at_time:
    head.append(f"kNN at {at_time[0]:.0f} s")
  table = []
  for name, r in rows.items():
    by_epoch = r["knn_top1_by_epoch"]
    table.append([name, len(r["seeds"]), by_epoch[0].pct()]
                 + [by_epoch[e].pct() if e in by_epoch else "-" for e in epochs]
                 + [r["linear_top1"].pct(), f"{r['seconds_per_epoch'].mean:.1f}"]
                 + ([at_time[1][name].pct()] if at_time else []))
  return markdown_table(head, table)


def variants_plot(rows: dict[str, dict], path: str, curves: Sequence[str],
                  highlight: str = "") -> bool:
  """kNN against epochs and against training seconds for `curves`; final kNN of every row."""
  plt = pyplot()
  if plt is None:
    return False
  fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
  for name in curves:
    if name not in rows:
      continue
    r = rows[name]
    epochs = sorted(r["knn_top1_by_epoch"])
    knn = [100 * r["knn_top1_by_epoch"][e].mean for e in epochs]
    width = 2.5 if name == highlight else 1.2
    axes[0].plot(epochs, knn, marker="o", label=name, linewidth=width)
    axes[1].plot([r["seconds_by_epoch"][e].mean for e in epochs], knn, marker="o", label=name,
                 linewidth=width)
  axes[0].set_xlabel("epoch")
  axes[1].set_xlabel("training seconds (evaluation excluded)")
  for ax in axes[:2]:
    ax.set_ylabel("kNN top-1 (%), mean over seeds")
    ax.legend(fontsize=7)
  names = list(rows)
  for i, name in enumerate(names):
    values = [100 * v for v in rows[name]["knn_top1"].values]
    axes[2].bar(i, sum(values) / len(values), color="C0" if name in curves else "C1", alpha=0.6)
    axes[2].scatter([i] * len(values), values, color="k", s=10, zorder=3)
  axes[2].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
  axes[2].set_ylim(min(100 * min(r["knn_top1"].values) for r in rows.values()) - 3, None)
  axes[2].set_ylabel("final kNN top-1 (%): bars mean, dots seeds")
  for ax in axes:
    ax.grid(alpha=0.3)
  save_figure(fig, path)
  return True


def rows_of(results: dict[str, list[dict]]) -> dict[str, dict]:
  """aggregate() of every variant with at least one finished run."""
  return {name: aggregate(runs) for name, runs in results.items() if runs}


def write_report(config, results: dict[str, list[dict]], command: str, markdown: Callable,
                 plot: Callable, figure: str) -> str:
  """results.{json,md} and the figure in config.results_dir; returns the Markdown.

  `markdown(config, rows, meta)` and `plot(config, rows, path)` are the
  experiment's own; rows are rows_of(results), meta is describe().
  """
  rows = rows_of(results)
  meta = describe(config, results, command)
  md = markdown(config, rows, meta)
  write_results(config.results_dir, "results", meta, rows, md)
  plot(config, rows, os.path.join(config.results_dir, figure))
  return md


def save_figure(fig, path: str) -> None:
  import matplotlib.pyplot as plt
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def pyplot():
  """matplotlib.pyplot with a file backend, or None (plots are then skipped)."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib is not installed: no plot written (pip install 'ssl_jax[plots]')")
    return None
  return plt


def main(module: str, report: Callable, variants: Optional[Callable] = None) -> None:
  """The command line of an experiment: `python -m <module> --config ... --workdir ...`.

  Flags are defined here, not at import, so that tests can import every
  experiment's run module into one process.
  `variants(config)`, when given, builds config.variants from the
  experiment's axes (so `--config.fractions=...` changes them);
  `report(config, results, command)` writes the results and returns Markdown.
  """
  from absl import app, flags, logging
  from ml_collections import config_flags
  folder = module.rsplit(".", 1)[0].replace(".", "/")
  config_flags.DEFINE_config_file("config", None, f"{folder}/config.py:<preset>")
  workdir = flags.DEFINE_string("workdir", None, "Folder for the runs of every variant.")
  flags.mark_flags_as_required(["config", "workdir"])

  def run(argv) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    config = flags.FLAGS.config
    if variants is not None:
      with config.unlocked():
        config.variants = variants(config)
    try:
      results = run_sweep(config, workdir.value)
    except SweepError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    print(report(config, results, f"python -m {module} " + " ".join(sys.argv[1:])))

  app.run(run)
