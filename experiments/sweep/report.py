"""Markdown tables and the results files every experiment writes under its table."""

from __future__ import annotations

import collections
import json
import os
from typing import Callable, Optional, Sequence

import ml_collections

from experiments.sweep.overrides import SweepError
from experiments.sweep.stats import rows_of, to_json

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


def device_line(summaries: Sequence[dict], here: str) -> str:
  """The machine the runs were made on: `here` when every run says so (or none says).

  A sweep resumed from committed records may mix machines, and CPU results
  differ by processor (`ssl_jax.devices.describe`); then each machine is
  named with its count of runs, and runs from before summaries kept their
  device are counted as not recorded.
  """
  counts = collections.Counter(s.get("device") or "not recorded" for s in summaries)
  if set(counts) in (set(), {here}, {"not recorded"}):  # no runs, all here, or none recorded
    return here
  return "; ".join(f"{name} ({n} run{'s' if n > 1 else ''})" for name, n in
                   sorted(counts.items(), key=lambda kv: (kv[0] == "not recorded", -kv[1])))


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
      "device": device_line(finished, devices.describe()),
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
  from ssl_jax import storage
  os.makedirs(results_dir, exist_ok=True)
  storage.write_text_atomic(os.path.join(results_dir, f"{name}.json"),
                              json.dumps(to_json({"meta": meta, key: rows}), indent=2))
  storage.write_text_atomic(os.path.join(results_dir, f"{name}.md"), md)


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
