"""Runs the transfer experiment; writes results.{json,md} and transfer.png.

    python -m experiments.transfer.run --config experiments/transfer/config.py:cpu --workdir runs/transfer_cpu

Every (method, seed) pretrains on the seen classes in `<workdir>/<method>/seed<k>`
(a sweep: finished runs are reused, an interrupted one resumes, and with
`config.records_dir` each finished run leaves a record to commit). Then each
trained encoder is evaluated on the unseen classes (`ssl_jax.train.evaluate_on`,
what `python -m ssl_jax.evaluate --train_data --test_data` runs), written to
`<run>/unseen.json` and beside the run's record (`seed<k>.unseen.json`), so a
fresh checkout reports without retraining.
"""

from __future__ import annotations

import json
import os
import pathlib
import tarfile

from experiments import sweep
from experiments.compare import flops as compare_flops
from experiments.transfer import config as config_lib

SHOTS = "shots_10"  # the few-label setting reported (config.eval.shots_per_class=(10,))


def folders(config) -> tuple[str, str]:
  """(seen, unseen) class-folder trees under config.data_root, written once from the archive.

  Each holds train/<class>/ and test/<class>/ with the first train_per_class and
  test_per_class files of each class in the archive's order.
  """
  root = pathlib.Path(config.data_root) / f"{config.train_per_class}x{config.test_per_class}"
  seen, unseen = root / "seen", root / "unseen"
  done = root / "complete.json"
  if done.exists():
    return str(seen), str(unseen)
  group = {c: seen for c in config_lib.SEEN} | {c: unseen for c in config_lib.UNSEEN}
  want = {"train": int(config.train_per_class), "test": int(config.test_per_class)}
  counts: dict = {}
  print(f"writing the seen and unseen class folders under {root} from {config.archive}")
  with tarfile.open(config.archive, "r:*") as tar:
    for m in tar:
      parts = pathlib.PurePosixPath(m.name).parts
      if not m.isfile() or len(parts) < 3 or parts[-3] not in want or parts[-2] not in group:
        continue
      key = parts[-3:-1]
      if counts.get(key, 0) < want[parts[-3]]:
        counts[key] = counts.get(key, 0) + 1
        out = group[parts[-2]] / parts[-3] / parts[-2] / parts[-1]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(tar.extractfile(m).read())
  short = {f"{s}/{c}": n for (s, c), n in counts.items() if n < want[s]}
  if len(counts) != 2 * len(group) or short:
    raise sweep.SweepError(f"{config.archive} lacks images for the class folders: {short or counts}")
  done.write_text(json.dumps({"archive": os.path.basename(config.archive), **want}))
  return str(seen), str(unseen)


def variants(config) -> tuple:
  """Every method at the comparison's budget: the FLOPs of SimCLR's epochs on `seen`."""
  seen, _ = folders(config)
  with config.unlocked():
    config.base.data.source = f"folder:{seen}"
  return compare_flops.variants(config)


def evaluate_unseen(config, workdir: str, results: dict) -> dict:
  """Adds `unseen` (kNN, linear and 10-shot top-1 on the unseen classes) to each finished
  run's summary: read from `<run>/unseen.json` or its record, else computed and written."""
  from ssl_jax import storage, train
  _, unseen = folders(config)
  for name, runs in results.items():
    for summary in runs:
      seed = summary["seed"]
      run_dir = os.path.join(workdir, name, f"seed{seed}")
      local = os.path.join(run_dir, "unseen.json")
      record = (os.path.join(config.records_dir, name, f"seed{seed}.unseen.json")
                if config.records_dir else "")
      found = next((p for p in (local, record) if p and os.path.exists(p)), None)
      if found:
        result = storage.read_json(found)
      elif os.path.isdir(os.path.join(run_dir, "checkpoints")):
        print(f"{name} seed {seed}: evaluating on the unseen classes", flush=True)
        result = train.evaluate_on(run_dir, f"folder:{unseen}/train", f"folder:{unseen}/test")
        storage.write_json_atomic(local, result)
      else:
        print(f"{name} seed {seed}: neither its run folder nor a record of its unseen "
              f"evaluation: left out of the unseen columns")
        continue
      if record and not os.path.exists(record):
        os.makedirs(os.path.dirname(record), exist_ok=True)
        storage.write_json_atomic(record, result)
      summary["unseen"] = result
  return results


def unseen_rows(results: dict) -> dict:
  """{method: {'knn_top1', 'linear_top1', 'shots_10'}: Stat over the seeds evaluated}."""
  out = {}
  for name, runs in results.items():
    done = [s["unseen"] for s in runs if "unseen" in s]
    if not done:
      continue
    stat = lambda xs: sweep.Stat(tuple(float(x) for x in xs))
    out[name] = {"seeds": [s["seed"] for s in runs if "unseen" in s],
                 "knn_top1": stat(u["knn_top1"] for u in done),
                 "linear_top1": stat(u["linear_top1"] for u in done),
                 SHOTS: stat(u["lowshot"][SHOTS]["linear_top1"]["mean"] for u in done)}
  return out


def markdown(config, rows: dict, unseen: dict, results: dict, meta: dict) -> str:
  head = ["method", "seeds", "epochs in budget", "seen: kNN", "seen: linear",
          "unseen: kNN", "unseen: linear", "unseen: 10-shot linear"]
  table = []
  for name, r in rows.items():
    u = unseen.get(name)
    cell = lambda key: u[key].pct() if u else "-"
    table.append([name, len(r["seeds"]), results[name][0]["epochs"], r["knn_top1"].pct(),
                  r["linear_top1"].pct(), cell("knn_top1"), cell("linear_top1"), cell(SHOTS)])
  cls = [s["classifier_top1"] for s in results.get("supervised", []) if "classifier_top1" in s]
  return "\n".join([
      f"# Transfer to unseen classes: {meta['preset']} preset", "",
      f"Command: `{meta['command']}`", "",
      f"Device: {meta['device']}; pretraining on CIFAR-10's classes 0-4 "
      f"({', '.join(config_lib.SEEN)}: {meta['num_train_examples']} train images, "
      f"{meta['num_test_examples']} test images), evaluated on classes 5-9 "
      f"({', '.join(config_lib.UNSEEN)}: {config.train_per_class} train and "
      f"{config.test_per_class} test images a class), never seen in pretraining; "
      f"{meta['model']}; batch {meta['batch_size']}; seeds {meta['seeds']}. Budget: "
      f"{config.budget:.4g} training FLOPs per run (SimCLR's {config.budget_epochs} epochs; "
      f"each method takes the whole epochs that fit). kNN and the linear probe are fit on "
      f"the unseen classes' training images; the 10-shot probe on 10 of them a class (mean "
      f"over {config.base.eval.lowshot_seeds} draws). The supervised method trains its "
      f"encoder and a classifier on the seen classes' labels"
      + (f" (its classifier's seen-class test top-1: "
         f"{sweep.Stat(tuple(cls)).pct()}%)" if cls else "")
      + ". Top-1 in %, mean ± half the range over seeds.", "",
      *sweep.fewer_seeds_in_rows(rows, meta["seeds"]),
      sweep.markdown_table(head, table), ""])


def plot(unseen: dict, path: str) -> bool:
  plt = sweep.pyplot()
  if plt is None or not unseen:
    return False
  fig, ax = plt.subplots(figsize=(8, 4))
  keys = (("knn_top1", "kNN"), ("linear_top1", "linear"), (SHOTS, "10-shot linear"))
  width = 0.8 / len(keys)
  names = list(unseen)
  for i, (key, label) in enumerate(keys):
    ax.bar([j + i * width for j in range(len(names))], [100 * unseen[n][key].mean for n in names],
           width, yerr=[100 * unseen[n][key].spread for n in names], capsize=3, label=label)
  ax.set_xticks([j + width for j in range(len(names))], names)
  ax.set_ylabel("top-1 on the unseen classes (%)")
  ax.grid(alpha=0.3, axis="y")
  ax.legend()
  sweep.save_figure(fig, path)
  return True


def report(config, results: dict, command: str) -> str:
  rows = sweep.rows_of(results)
  unseen = unseen_rows(results)
  meta = {**compare_flops.budget_meta(config, results, command),
          "seen_classes": list(config_lib.SEEN), "unseen_classes": list(config_lib.UNSEEN)}
  md = markdown(config, rows, unseen, results, meta)
  sweep.write_results(config.results_dir, "results", meta, {"seen": rows, "unseen": unseen}, md)
  plot(unseen, os.path.join(config.results_dir, "transfer.png"))
  return md


if __name__ == "__main__":
  sweep.main("experiments.transfer.run", report, variants, evaluate_unseen)
