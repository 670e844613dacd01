"""Running a sweep: each (variant, seed) trained once, resumed, or read back.

Each (variant, seed) trains in `<workdir>/<variant>/seed<k>`. A finished run
(its summary.json exists) is never recomputed and an interrupted one resumes;
either way the run's saved config.json must equal the config asked for
(ignoring fields that only say where files are), so a changed sweep cannot
silently reuse runs made under other settings. Every experiment runner,
the comparison included, reuses runs through `run_one`.

A sweep too long for one sitting can also keep a record of each finished
run beside its results (`config.records_dir`: `<variant>/seed<k>.json`, the
run's config and summary, a few kB). A record stands in for a run whose
folder is gone, so a fresh checkout resumes the sweep where the committed
records end; the record's config is checked like a run folder's. Delete the
records to train everything again.
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Optional

import ml_collections

from configs import default
from experiments.sweep.overrides import SweepError, parse_variants, variant_config

# Fields that say where things are or how often to log, not what is trained.
IGNORED_FIELDS = ("data.source_reason", "data.source_chosen", "data.cache_dir", "data.tfds_data_dir",
                  "log_every_steps", "checkpoint_every_epochs", "checkpoint_every_steps",
                  "keep_checkpoints", "compilation_cache_dir", "profile_steps")
# A FLOP budget is XLA's count of a step, which moves by parts per million with
# the way it is counted (2026-12-04: the step vmapped over the devices for the
# CPU against the pmapped step, 8.6e-6 apart) and may with the jax version; a
# run's epochs follow from it in whole epochs, so such a change is no other run.
FLOPS_RTOL = 1e-4


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
  `train_flops` matches within a relative `FLOPS_RTOL`. `init_from` (a run the
  sweep starts another from) is compared by its last two parts, `<variant>/seed<k>`,
  so a record made under another --workdir still counts.
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
    if field == "init_from" and isinstance(x, str) and isinstance(y, str):
      x, y = (os.path.join(*os.path.normpath(p).split(os.sep)[-2:]) if p else p for p in (x, y))
    if (field == "train_flops" and isinstance(x, float) and isinstance(y, float)
        and abs(x - y) <= FLOPS_RTOL * max(abs(x), abs(y))):
      continue
    if x != y:
      diffs.append(f"{field}: run has {x!r}, sweep wants {y!r}")
  return diffs


def _check_same_config(saved: dict, config: ml_collections.ConfigDict, where: str,
                       fix: str) -> None:
  diffs = config_differences(saved, config)
  if diffs:
    raise SweepError(f"{where} holds a run made with another config ("
                     + "; ".join(diffs[:5]) + (" ..." if len(diffs) > 5 else "")
                     + f"). {fix}")


def record_path(config: ml_collections.ConfigDict, variant: str, seed: int) -> Optional[str]:
  """Where the sweep keeps (variant, seed)'s run record, or None without config.records_dir."""
  records = config.get("records_dir", "")
  return os.path.join(records, variant, f"seed{seed}.json") if records else None


def _write_record(path: str, workdir: str, summary: dict) -> None:
  from ssl_jax import storage
  os.makedirs(os.path.dirname(path), exist_ok=True)
  storage.write_json_atomic(path, {"config": storage.read_json(os.path.join(workdir, "config.json")),
                                   "summary": summary})


def run_one(config: ml_collections.ConfigDict, workdir: str,
            train_fn: Optional[Callable] = None, record: Optional[str] = None) -> dict:
  """Trains one run, resumes it, or reads its finished summary.

  With `record` (a path, see `record_path`): a run folder without a summary
  is replaced by the record when one exists, and a finished run writes one.
  """
  from ssl_jax import storage
  saved_path = os.path.join(workdir, "config.json")
  if os.path.exists(saved_path):
    _check_same_config(storage.read_json(saved_path), config, workdir,
                       "Delete that folder or use another --workdir.")
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(summary_path):
    summary = storage.read_json(summary_path)
  elif record and os.path.exists(record):
    saved = storage.read_json(record)
    _check_same_config(saved["config"], config, record,
                       "Delete that record (and its run folder) to train it again.")
    return saved["summary"]
  else:
    if train_fn is None:
      from ssl_jax import train  # heavy: only when something is trained
      train_fn = train.train_and_evaluate
    summary = train_fn(config, workdir)
  if record and not os.path.exists(record):
    _write_record(record, workdir, summary)
  return summary


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
      record = record_path(config, v.name, seed)
      if os.path.exists(os.path.join(run_dir, "summary.json")):
        state = f"finished ({run_dir})"
      elif record and os.path.exists(record):
        state = f"recorded ({record})"
      elif config.get("only_finished", False):
        log(f"[{done}/{total}] {v.name} seed {seed}: not finished, left out")
        continue
      else:
        state = f"training ({run_dir})"
      log(f"[{done}/{total}] {v.name} seed {seed}: {state}")
      run_config = variant_config(config.base, v, seed)
      if "{" in run_config.get("init_from", ""):
        # A variant started from another of this sweep's runs names it by its seed
        # and the sweep's folder: init_from={workdir}/ours/seed{seed}.
        with run_config.unlocked():
          run_config.init_from = run_config.init_from.format(seed=seed, workdir=workdir)
      if run_config.get("compilation_cache_dir", "") == "workdir":
        # One cache for the sweep: its runs compile the same programs.
        with run_config.unlocked():
          run_config.compilation_cache_dir = os.path.join(workdir, "compilation_cache")
      summary = dict(run_one(run_config, run_dir, train_fn, record))
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
