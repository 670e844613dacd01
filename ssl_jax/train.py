"""The training loop (the shell): epochs, checkpoints, logging, evaluation, preemption.

`train_and_evaluate(config, workdir)` builds a run from its config
(`ssl_jax.builders`), restores or initialises its state, and runs the pmapped
step of its method (`ssl_jax.methods`) epoch by epoch. Everything the loop
changes as it goes (step, epoch, clock, progress bar, accumulated metrics,
history) lives in one `Loop` object (`ssl_jax.loop`).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np

from ssl_jax import builders
from ssl_jax import checkpoint
from ssl_jax import compile_cache
from ssl_jax import compute
from ssl_jax import data as data_lib
from ssl_jax import devices
from ssl_jax import downloads
from ssl_jax import evaluate
from ssl_jax import inputs as inputs_lib
from ssl_jax import mapping
from ssl_jax import methods
from ssl_jax import models
from ssl_jax import preemption
from ssl_jax import profiling
from ssl_jax import reporting
from ssl_jax import run_files
from ssl_jax import steps
from ssl_jax import storage
from ssl_jax import warm_start
from ssl_jax import workdir_lock
from ssl_jax.loop import Loop
from ssl_jax.run_config import (ConfigError, bank_lr_note, num_shards, optim_note,
                                shard_large_bank, validate_config, warmup_note)


def peak_memory_bytes() -> Optional[int]:
  """Peak bytes in use on the first local device, or None where the backend does not say."""
  return devices.memory_stat("peak_bytes_in_use")


def mapped_step(step_fn: steps.StepFn, steps_per_epoch: int, resident: bool,
                parallel: str = "pmap") -> Callable:
  """The mapped step the loop calls: `(state, *inputs) -> (state, sums)`.

  resident: the step gathers its batch from device-resident data
  (`steps.make_indexed_step`). parallel: "pmap" or "mesh" (`ssl_jax.mapping`).
  """
  fn = steps.make_indexed_step(step_fn, steps_per_epoch) if resident else step_fn
  return mapping.map_step(fn, parallel)


def eval_variables(state) -> dict:
  """The state's variables as the pmapped evaluation programs take them: this
  process's [D_local, ...] rows (a view, with config.parallel="mesh")."""
  return mapping.to_local(steps.variables(state))


def source_reason(config) -> str:
  """Why the run reads config.data.source: `data.source_reason` where it explains
  this source (`data.source_chosen`), else "set in the config"."""
  data = config.data
  if data.get("source_reason") and data.get("source_chosen", data.source) == data.source:
    return data.source_reason
  return "set in the config"


def _other_source_hint(config) -> str:
  """What to do when the config's source cannot be downloaded."""
  folder = ("--config.data.source=folder:PATH (a folder or .tar of train/ and test/, one "
            "subfolder per class)")
  reason = source_reason(config)
  if reason in ("set in the config", "given on the command line"):
    return f"Pass {folder}, or prepare the dataset on a machine with network."
  return f"The config chose it because {reason}: provide that, or pass {folder}."


def _setup_log(config, nd: int, is_main: bool):
  log = print if is_main else (lambda *a, **k: None)
  log(f"ssl_jax: method {config.method}, {config.model.name} ({models.describe(config.model)}), "
      f"{nd} {jax.devices()[0].platform} device(s)")
  log(f"data source: {config.data.source} ({source_reason(config)})")
  for note in (bank_lr_note(config), optim_note(config)):
    if note:
      log(note)
  return log


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per `config`, resuming from `workdir` if it holds a checkpoint.

  Writes config.json, run_info.json, init_eval.json, metrics.jsonl,
  tensorboard/, checkpoints/, epoch_timing.json (mid-epoch checkpoints
  only) and summary.json to `workdir`; returns the summary. Raises
  ConfigError or DataError (before compiling anything), FloatingPointError
  on divergence (the last good checkpoint kept) and preemption.Preempted
  after SIGTERM (a checkpoint written, at the same step in every process).
  """
  t_start = time.time()
  nd = jax.local_device_count()
  validate_config(config, nd)
  warm_start.check_source(config, workdir)
  is_main = jax.process_index() == 0
  created = not storage.is_remote(workdir) and not storage.exists(workdir)
  run_files.prepare_workdir(workdir)
  try:
    with workdir_lock.hold(workdir, log=print if is_main else (lambda *a: None)):
      return _train_and_evaluate(config, workdir, t_start, nd, is_main)
  except BaseException:
    # A run that stopped before writing anything (its data source failed, say)
    # leaves no empty workdir behind it.
    if created and is_main:
      run_files.remove_if_empty(workdir)
    raise


def _train_and_evaluate(config, workdir: str, t_start: float, nd: int, is_main: bool) -> dict:
  """train_and_evaluate once the config is valid and the workdir is held."""
  log = _setup_log(config, nd, is_main)

  try:
    train, test, skipped = builders.load_data(config, log, workdir)
  except downloads.DownloadFailed as e:
    raise downloads.DownloadFailed(f"{e} {_other_source_hint(config)}") from None
  num_classes = builders.count_classes(train, test)
  for note in builders.label_notes(train, test):
    log(note)
  global_batch = int(config.batch_size)
  shards = num_shards(config)
  steps_per_epoch = data_lib.steps_per_epoch(train.num_examples, global_batch, shards)
  if steps_per_epoch < 1:
    raise ConfigError(f"config.batch_size ({global_batch}) is larger than the training set "
                      f"({train.num_examples} images after config.data.fraction="
                      f"{config.data.fraction}, in {shards} shard(s)).")
  run_files.check_resumable(workdir, config, train.num_examples, log)
  given = config  # config.json keeps what was asked; a FLOP budget plans num_epochs
  config, note = shard_large_bank(config, train.num_examples, jax.device_count())
  if note:
    log(note)
  config, flops_plan = compute.plan(config, train, steps_per_epoch, workdir, log)
  if note := warmup_note(config):
    log(note)
  on_device = bool(config.data.get("on_device", False))
  if on_device:
    inputs_lib.check_resident_fits(train)
  total_steps = steps_per_epoch * config.num_epochs
  log(f"{reporting.count(train.num_examples, 'training image')} "
      f"({reporting.count(num_classes, 'class')}), "
      f"{reporting.count(test.num_examples, 'test image')}; batch {global_batch}, "
      f"{steps_per_epoch} steps/epoch, {reporting.count(int(config.num_epochs), 'epoch')}"
      + (f"; {jax.process_count()} processes, {reporting.count(shards, 'data shard')}"
         if jax.process_count() > 1 or shards > 1 else ""))

  # Before the first program compiles (the state's initialisation).
  compile_cache.enable(config, workdir, log)
  model = builders.build_model(config)
  schedule, tx = builders.build_optimizer(config, steps_per_epoch)
  aug_cfg = builders.augment_config(config)
  p_eval = evaluate.make_embed_fn(model, aug_cfg)

  parallel = config.get("parallel", "pmap")
  # Several processes save asynchronously only from the mesh's global arrays:
  # from host copies (pmap) orbax's background barriers interleaved with the
  # next steps' collectives differently in each process (a deadlock seen with
  # 2 processes on gloo).
  manager = checkpoint.create_manager(
      workdir, config.keep_checkpoints, cleanup=True,
      asynchronous=jax.process_count() == 1 or parallel == "mesh")
  # Shapes and dtypes only (jax.eval_shape): a resumed run never builds the
  # fresh state, whose zero bank alone is N x d. A mesh run restores straight
  # into its devices, each process reading only its bank rows.
  abstract = builders.abstract_state(config, model, tx, train.num_examples)
  state = checkpoint.restore_latest(manager, builders.restore_target(config, abstract), log,
                                    expected_shapes=abstract)
  init_eval_path = storage.join(workdir, "init_eval.json")
  if state is None or not storage.exists(init_eval_path):
    state = warm_start.warm_start(
        config, builders.initial_state(config, model, tx, train.num_examples), log)
    state = builders.init_bank(config, state, train, log)
    init_eval = _evaluate_untrained(config, p_eval, state, train, test, num_classes, log)
    if is_main:
      storage.write_json_atomic(init_eval_path, init_eval)
      # Resets the log of an earlier attempt that died before its first checkpoint.
      run_files.truncate_metrics(workdir, 0)
    history, carried, window = [], (0.0, 0), None
  else:
    log(f"resuming from checkpoint at step {int(state.step)} "
        f"(epoch {int(state.step) // steps_per_epoch})")
    init_eval = storage.read_json(init_eval_path)
    history = [r for r in run_files.truncate_metrics(workdir, int(state.step))
               if "epoch_seconds" in r]
    carried = run_files.carried_epoch_time(workdir, int(state.step), steps_per_epoch)
    window = run_files.carried_metric_sums(workdir, int(state.step), steps_per_epoch)
  if is_main:
    run_files.write_config(workdir, given)
    run_files.write_run_info(workdir, config, train.num_examples)

  step_fn = builders.make_train_step(config, model, tx, total_steps, train.num_examples,
                                     labels=train.labels)
  p_train_step = mapped_step(step_fn, steps_per_epoch, on_device, parallel)
  resident = inputs_lib.resident_split(train) if on_device else None
  # For the mesh, one global array per leaf from here on; the step returns such.
  state = builders.step_state(config, state)
  if parallel == "mesh":
    resident = mapping.to_global(resident)
  step = int(devices.unreplicate(state.step))
  host_augment = None if config.augment.on_device else builders.make_host_augment(
      aug_cfg, devices.unreplicate(state.rng))
  loop = Loop(config=config, workdir=workdir, train=train, steps_per_epoch=steps_per_epoch,
              flops_plan=flops_plan,
              schedule=schedule, manager=manager,
              writer=reporting.MetricWriter(workdir, enabled=is_main), is_main=is_main,
              state=state, step=step, history=history, carried=carried, acc=window)
  first_epoch = step // steps_per_epoch  # this process's: it pays for compilation
  inputs_lib.check_indices(train, config, nd, first_epoch)
  profiler = profiling.Profiler(config, workdir, log)
  first_step_seconds = None
  try:
    with preemption.StopRequest() as stop:
      while loop.step < total_steps:
        loop.begin_epoch()
        inputs = inputs_lib.epoch_inputs(config, train, epoch=loop.epoch, start=loop.start,
                                         step=loop.step, resident=resident,
                                         host_augment=host_augment, nd=nd)
        loop.start_clock()
        for args in inputs:
          profiler.before_step(loop.step)
          loop.add_step(*p_train_step(loop.state, *args))
          profiler.after_step(loop.step, loop.state)
          if first_step_seconds is None:   # once per process: what a restart waits for
            jax.block_until_ready(loop.state.step)
            first_step_seconds = time.time() - t_start
            log(f"first step done {first_step_seconds:.1f} s after start (reading data, "
                f"initialising and compiling included)")
          # At an epoch's last step the epoch-end work (record, kNN, then a
          # save if either cadence asks) runs first, so a resumed run's log
          # matches an uninterrupted one.
          if loop.step % steps_per_epoch == 0:
            continue
          if loop.stop_agreed(stop):
            loop.preempt(stop)
          if config.checkpoint_every_steps and loop.step % config.checkpoint_every_steps == 0:
            loop.save_checkpoint()
          elif loop.step % config.log_every_steps == 0:
            loop.fetch_and_log()
        _end_epoch(loop, p_eval, test, num_classes, inputs,
                   includes_compile=loop.epoch == first_epoch)
        if loop.stop_agreed(stop, at_epoch_end=True):
          loop.preempt(stop)
  finally:
    profiler.stop()   # a window the run did not reach the end of is still written
    # Lets a pending asynchronous save finish, whatever stopped the loop.
    checkpoint.finish_saves(manager)
    loop.writer.close()
  loop.first_step_seconds = first_step_seconds
  return _finish(loop, p_eval, test, num_classes, init_eval, skipped, t_start, log)


def _end_epoch(loop: Loop, p_eval, test, num_classes: int, inputs: inputs_lib.EpochInput, *,
               includes_compile: bool) -> None:
  """The epoch's record (time, kNN every eval.every_epochs), then its checkpoint."""
  config = loop.config
  loop.fetch_and_log()
  jax.block_until_ready(loop.state.step)
  dt, timed_steps = loop.epoch_seconds()
  epoch_done = loop.step // loop.steps_per_epoch
  # The first epoch of every process (a resumed run has several) pays for
  # compilation; seconds_per_epoch leaves those out.
  record = {"epoch_seconds": dt, "epoch_steps": timed_steps,
            "images_per_second": timed_steps * int(config.batch_size) / dt,
            **inputs.record(timed_steps * int(config.batch_size), dt)}
  loop.carried = (0.0, 0)
  if loop.is_main and ("input_images_per_second" in record or record["input_wait_fraction"] > 0.1):
    decoded = (f"input decodes {record['input_images_per_second']:.0f} img/s, "
               if "input_images_per_second" in record else "")
    print(f"epoch {epoch_done}: {decoded}steps take {record['images_per_second']:.0f} img/s; "
          f"waited {100 * record['input_wait_fraction']:.0f}% of the epoch for input")
  if (config.eval.every_epochs and epoch_done % config.eval.every_epochs == 0
      and epoch_done < config.num_epochs):
    from_bank = config.eval.get("knn_source", "embed") == "bank"
    # The whole bank on every host only for kNN against it; freshness reads
    # its probe rows and Gram matrix (a sharded bank is not gathered for it).
    bank = builders.bank_of(config, loop.state, loop.train.num_examples) if from_bank else None
    knn = builders.run_evaluation(
        config, p_eval, eval_variables(loop.state), loop.train, test, num_classes,
        linear=False, test_only=from_bank, bank=bank)
    del bank
    knn.update(builders.bank_freshness(
        config, p_eval, eval_variables(loop.state), loop.train,
        builders.bank_reader(config, loop.state, loop.train.num_examples), loop.step,
        loop.steps_per_epoch))
    record.update(knn)
    if loop.is_main:
      print(f"epoch {epoch_done}: kNN top-1 "
            + (f"{reporting.percent(knn['knn_top1_bank'])} (bank)" if from_bank
               else reporting.percent(knn["knn_top1"])))
      if line := reporting.freshness_line(knn):
        print(f"epoch {epoch_done}: {line}")
  loop.writer.write(loop.step, record, epoch=epoch_done, includes_compile=includes_compile)
  loop.history.append({"step": loop.step, "epoch": epoch_done,
                       "includes_compile": includes_compile, **record})
  every_steps = config.checkpoint_every_steps
  if (epoch_done % config.checkpoint_every_epochs == 0
      or (every_steps and loop.step % every_steps == 0)
      or loop.step >= loop.steps_per_epoch * config.num_epochs):
    loop.save_checkpoint()


def _finish(loop: Loop, p_eval, test, num_classes: int, init_eval: dict, skipped: int,
            t_start: float, log) -> dict:
  """The final evaluation and summary.json."""
  config, history, spe = loop.config, loop.history, loop.steps_per_epoch
  replicas_identical = builders.check_replicas(loop.state,
                                               include_bank=not builders.is_sharded(config))
  log("final evaluation (kNN and linear probe)...")
  bank = builders.bank_of(config, loop.state, loop.train.num_examples)
  final = builders.run_evaluation(
      config, p_eval, eval_variables(loop.state), loop.train, test, num_classes, linear=True,
      bank=bank, log=log)
  del bank
  final.update(builders.bank_freshness(
      config, p_eval, eval_variables(loop.state), loop.train,
      builders.bank_reader(config, loop.state, loop.train.num_examples), loop.step, spe))
  if line := reporting.freshness_line(final):
    log(line)
  # Seconds per step without compilation: the first epoch of each process pays
  # for it, so it is left out where a full later epoch exists. (Records from
  # before includes_compile existed: the first one compiled.)
  timed = [r for i, r in enumerate(history) if r["epoch_steps"] == spe
           and not r.get("includes_compile", i == 0)] or history
  sec_per_step = (sum(r["epoch_seconds"] for r in timed)
                  / max(sum(r["epoch_steps"] for r in timed), 1))
  summary = {
      "method": config.method,
      "dataset": config.data.source,
      "num_train_examples": loop.train.num_examples,
      "num_test_examples": test.num_examples,
      "epochs": config.num_epochs,
      "devices": jax.device_count(),
      "platform": jax.devices()[0].platform,
      "device": devices.describe(),  # the finishing machine's: CPU results vary by processor
      # Before step 1: against the embedded training split, or against the
      # calibrated bank with eval.knn_source="bank" (`knn_top1_bank_init`).
      **{f"{key}_init": value for key, value in init_eval.items()},
      **final,
      "seconds_per_epoch": sec_per_step * spe,
      "images_per_second": int(config.batch_size) / sec_per_step if sec_per_step else None,
      "peak_memory_bytes": peak_memory_bytes(),
      "skipped_files": skipped,
      "input_pipeline": inputs_lib.pipeline_name(config),
      "input_wait_fraction": (sum(r.get("input_wait_seconds", 0.0) for r in timed)
                              / max(sum(r["epoch_seconds"] for r in timed), 1e-9)),
      "corrupt_records": getattr(loop.train.images, "bad", 0) + getattr(test.images, "bad", 0),
      "processes": jax.process_count(),
      "replicas_identical": replicas_identical,
      # Every step once, over all processes of a resumed run (epoch records
      # carry an interrupted epoch's seconds), compilation included.
      "train_seconds": sum(r["epoch_seconds"] for r in history),
      "wall_seconds": time.time() - t_start,
      # This process's start to its first step done (a restart's wait).
      "first_step_seconds": loop.first_step_seconds,
      **loop.flops_plan,
      "history": history,
  }
  if loop.is_main:
    storage.write_json_atomic(storage.join(loop.workdir, "summary.json"), summary)
    untrained = summary.get("knn_top1_init", summary.get("knn_top1_bank_init"))
    log(f"kNN top-1: {'start' if config.get('init_from') else 'untrained'} "
        f"{reporting.percent(untrained)} -> trained "
        f"{reporting.percent(summary['knn_top1'])}; linear top-1 "
        f"{reporting.percent(summary['linear_top1'])}"
        + (f"; classifier top-1 {reporting.percent(summary['classifier_top1'])}"
           if "classifier_top1" in summary else "")
        + f" ({summary['wall_seconds']:.0f} s, summary in {loop.workdir}/summary.json)")
  return summary


def _evaluate_untrained(config, p_eval, state, train, test, num_classes: int, log) -> dict:
  """The untrained network's kNN; against the calibrated bank with eval.knn_source="bank"
  (no second pass over the training data). Logs the passes made before step 1."""
  from_bank = config.eval.get("knn_source", "embed") == "bank"
  name = "starting network (config.init_from)" if config.get("init_from") else "untrained network"
  log(f"evaluating the {name} (kNN" + (" against the bank)..." if from_bank else ")..."))
  bank = np.asarray(jax.device_get(state.bank)) if methods.get(config.method).uses_bank else None
  variables = devices.replicate(steps.variables(state))
  result = builders.run_evaluation(config, p_eval, variables, train, test, num_classes,
                                   linear=False, bank=bank if from_bank else None,
                                   test_only=from_bank)
  # The bank as initialised against the same network's evaluation embeddings.
  result.update(builders.bank_freshness(config, p_eval, variables, train, bank, 0, 1))
  if from_bank:
    log(f"{name}: kNN top-1 {reporting.percent(result['knn_top1_bank'])} (bank)")
  else:
    log(f"{name}: kNN top-1 {reporting.percent(result['knn_top1'])} "
        f"(embedding {reporting.percent(result['knn_top1_embedding'])})")
  if line := reporting.freshness_line(result):
    log(f"{name}: {line}")
  log(f"passes over the training data before step 1: {train.passes}")
  return result


def evaluate_checkpoint(workdir: str) -> dict:
  """kNN and linear top-1 of the latest checkpoint in `workdir`."""
  config = run_files.load_run_config(workdir)
  train, test, _ = builders.load_data(config, workdir=workdir)
  num_classes = builders.count_classes(train, test)
  for note in builders.label_notes(train, test):
    print(note)
  model = builders.build_model(config)
  steps_per_epoch = data_lib.steps_per_epoch(train.num_examples, config.batch_size,
                                             num_shards(config))
  _, tx = builders.build_optimizer(config, steps_per_epoch)
  template = builders.abstract_state(config, model, tx, train.num_examples)
  state = checkpoint.restore_latest(checkpoint.create_manager(workdir), template)
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints.")
  p_eval = evaluate.make_embed_fn(model, builders.augment_config(config))
  result = builders.run_evaluation(config, p_eval, devices.replicate(steps.variables(state)),
                                   train, test, num_classes, linear=True)
  return {"step": int(state.step), "epoch": int(state.step) / max(steps_per_epoch, 1), **result}


def evaluate_on(workdir: str, train_spec: str, test_spec: str) -> dict:
  """kNN and linear top-1 of the latest checkpoint in `workdir` on another labelled dataset:
  fit on `train_spec`'s split, tested on `test_spec`'s (`evaluate/other_data.py`)."""
  from ssl_jax import encoder as encoder_lib
  from ssl_jax.evaluate import other_data
  enc = encoder_lib.load_encoder(workdir)
  config = enc.config
  train = other_data.load(config, train_spec, "train", num_shards(config))
  test = other_data.match_classes(
      train, other_data.load(config, test_spec, "test", num_shards(config)), train_spec, test_spec)
  for note in builders.label_notes(train, test):
    print(note)
  model = builders.build_model(config)
  p_eval = evaluate.make_embed_fn(model, builders.augment_config(config))
  # A classifier head (the supervised method) names the run's classes, not these.
  result = builders.run_evaluation(config, p_eval, devices.replicate(enc.variables), train, test,
                                   builders.count_classes(train, test), linear=True,
                                   classifier=False)
  return {"step": enc.step, "train_data": train_spec, "test_data": test_spec,
          "num_train_examples": train.num_examples, "num_test_examples": test.num_examples,
          **result}
