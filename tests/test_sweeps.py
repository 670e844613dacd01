"""Experiment sweeps: variant parsing, resumable runs, aggregation and the three reports."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from configs import default
from experiments import sweep
from experiments.ablation import config as ablation_config
from experiments.ablation import run as ablation_run
from experiments.bank_dtype import config as bank_dtype_config
from experiments.bank_dtype import run as bank_dtype_run
from experiments.data_efficiency import config as data_config
from experiments.data_efficiency import run as data_run
from experiments.model_efficiency import arch as model_arch
from experiments.model_efficiency import config as model_config
from experiments.model_efficiency import run as model_run
from experiments.recipe import config as recipe_config
from experiments.recipe import run as recipe_run
from ssl_jax import run_config
from tests.helpers import committed_record_differences, needs_cifar10, tiny_config


def test_variants_are_parsed_to_the_fields_types_and_checked():
  base = default.get_config()
  [v] = sweep.parse_variants([("a", "method=npid loss.kl_weight=1 bank.init=random "
                                    "augment.flip=false augment.crop_scale=(0.5,1.0) "
                                    "num_epochs=3")], base)
  assert dict(v.overrides) == {"method": "npid", "loss.kl_weight": 1.0, "bank.init": "random",
                               "augment.flip": False, "augment.crop_scale": (0.5, 1.0),
                               "num_epochs": 3}
  assert isinstance(v.get("loss.kl_weight"), float)
  for spec, match in [([("a", "loss.nope=1")], "no field 'loss.nope'"),
                      ([("a", "nope.x=1")], "no section 'nope'"),
                      ([("a", "num_epochs=2.5")], "float, the field holds a int"),
                      ([("a", "augment.flip=yes")], "true or false"),
                      ([("a", "loss.kl_weight")], "not field=value"),
                      ([("a", "method=moco")], "method must be one of"),
                      ([("a/b", "")], "not a folder name"),
                      ([("a", ""), ("a", "")], "appears twice"),
                      ([("a",)], "a variant is"), ([], "empty")]:
    with pytest.raises(sweep.SweepError, match=match):
      sweep.parse_variants(spec, base)


def test_variant_config_applies_method_then_overrides_then_seed():
  base = default.get_config()
  [v] = sweep.parse_variants([("v", "loss.temperature=0.2 method=npid")], base)
  config = sweep.variant_config(base, v, seed=3)
  # set_method('npid') sets tau 0.07, the explicit override wins whatever its position.
  assert (config.method, config.loss.temperature, config.bank.init, config.seed) == (
      "npid", 0.2, "random", 3)
  assert (base.method, base.loss.temperature, base.seed) == ("ours", 0.1, 0)


def _fake_train(calls):
  def train_fn(config, workdir):
    calls.append((workdir, config.seed))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort())
    s = _summary(0.3 + 0.01 * config.seed)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(s, f)
    return s
  return train_fn


def _summary(knn, epochs=4, n=500, ips=100.0):
  return {"knn_top1_init": 0.2, "knn_top1": knn, "linear_top1": knn + 0.05, "epochs": epochs,
          "num_train_examples": n, "num_test_examples": 200, "dataset": "folder:/x/c.tar.gz",
          "seconds_per_epoch": 10.0, "images_per_second": ips,
          "history": [{"epoch": e, "epoch_seconds": 10.0 + (e == 1),
                       **({"knn_top1": knn - 0.01} if e == 2 else {})}
                      for e in range(1, epochs + 1)]}


def _sweep_config(variants, seeds=(0, 1)):
  config = ablation_config.get_config("cpu")
  config.variants = variants
  config.seeds = seeds
  return config


def test_sweep_runs_seed_major_never_recomputes_and_refuses_a_changed_config(tmp_path):
  config = _sweep_config((("a", "loss.kl_weight=0.0"), ("b", "")))
  calls, lines = [], []
  results = sweep.run_sweep(config, str(tmp_path), log=lines.append, train_fn=_fake_train(calls))
  assert [(os.path.relpath(w, tmp_path), s) for w, s in calls] == [
      ("a/seed0", 0), ("b/seed0", 0), ("a/seed1", 1), ("b/seed1", 1)]
  assert [s["seed"] for s in results["a"]] == [0, 1]
  assert results["a"][0]["num_params"] == sweep.count_params(config.base)
  assert lines[0].startswith("[1/4] a seed 0: training")

  again, lines = [], []
  sweep.run_sweep(config, str(tmp_path), log=lines.append, train_fn=_fake_train(again))
  assert again == [] and "finished" in lines[0]

  # Where files are kept does not count; what is trained does.
  saved = os.path.join(tmp_path, "a", "seed0", "config.json")
  with open(saved) as f:
    c = json.load(f)
  c["data"]["cache_dir"], c["log_every_steps"] = "/elsewhere", 1
  c["data"]["source"] = "folder:/other/checkout/" + os.path.basename(c["data"]["source"])
  del c["data"]["shards"]           # added to the library later; the sweep wants its default
  with open(saved, "w") as f:
    json.dump(c, f)
  sweep.run_sweep(config, str(tmp_path), log=lines.append, train_fn=_fake_train(again))
  assert again == []
  config.base.data.shards = 2
  with pytest.raises(sweep.SweepError, match="data.shards: run has '<absent>', sweep wants 2"):
    sweep.run_sweep(config, str(tmp_path), log=lines.append, train_fn=_fake_train(again))
  config.base.data.shards = 0
  config.variants = (("a", "loss.kl_weight=0.5"), ("b", ""))
  with pytest.raises(sweep.SweepError, match="loss.kl_weight: run has 0.0, sweep wants 0.5"):
    sweep.run_sweep(config, str(tmp_path), log=lines.append, train_fn=_fake_train(again))


def test_only_finished_reports_without_training(tmp_path):
  config = _sweep_config((("a", ""), ("b", "")), seeds=(0,))
  sweep.run_sweep(_sweep_config((("a", ""),), seeds=(0,)), str(tmp_path), log=lambda s: None,
                  train_fn=_fake_train([]))
  config.only_finished = True
  calls = []
  results = sweep.run_sweep(config, str(tmp_path), log=lambda s: None,
                            train_fn=_fake_train(calls))
  assert calls == [] and len(results["a"]) == 1 and results["b"] == []
  # Nothing finished: a clear error, not a report of nothing.
  with pytest.raises(sweep.SweepError, match="no run under .* has finished yet"):
    sweep.run_sweep(config, str(tmp_path / "empty"), log=lambda s: None,
                    train_fn=_fake_train(calls))


def test_records_let_a_fresh_checkout_resume_a_sweep_and_are_checked(tmp_path):
  config = _sweep_config((("a", ""), ("b", "loss.kl_weight=0.0")), seeds=(0,))
  config.records_dir = str(tmp_path / "records")
  calls = []
  first = sweep.run_sweep(config, str(tmp_path / "runs"), log=lambda s: None,
                          train_fn=_fake_train(calls))
  assert len(calls) == 2
  assert sorted(os.listdir(tmp_path / "records")) == ["a", "b"]
  # The run folders are gone (a new checkout): the records stand in for them.
  shutil.rmtree(tmp_path / "runs")
  lines = []
  again = sweep.run_sweep(config, str(tmp_path / "runs"), log=lines.append,
                          train_fn=_fake_train(calls))
  assert len(calls) == 2 and "recorded" in lines[0]
  assert again["b"][0]["knn_top1"] == first["b"][0]["knn_top1"]
  config.only_finished = True   # a record counts as finished
  assert len(sweep.run_sweep(config, str(tmp_path / "runs"), log=lambda s: None)["a"]) == 1
  # A record made under other settings is refused like a run folder.
  config.variants = (("a", ""), ("b", "loss.kl_weight=0.5"))
  with pytest.raises(sweep.SweepError, match="records/b/seed0.json holds a run made with "
                     "another config .*kl_weight"):
    sweep.run_sweep(config, str(tmp_path / "runs"), log=lambda s: None)
  # A run finished before records were kept gets its record when the sweep reads it.
  config.variants = (("a", ""), ("b", "loss.kl_weight=0.0"))
  config.only_finished = False
  shutil.rmtree(tmp_path / "records")
  sweep.run_sweep(_sweep_config((("a", ""),), seeds=(0,)), str(tmp_path / "runs2"),
                  log=lambda s: None, train_fn=_fake_train(calls))
  config.variants = (("a", ""),)
  sweep.run_sweep(config, str(tmp_path / "runs2"), log=lambda s: None, train_fn=_fake_train(calls))
  assert len(calls) == 3 and os.path.exists(tmp_path / "records" / "a" / "seed0.json")


def test_the_architecture_sweeps_records_can_be_committed():
  records = model_config.get_config("arch").records_dir
  assert records.startswith(model_config.get_config("arch").results_dir)
  # A record git ignores (a `runs/` pattern, say) would never reach a fresh checkout.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  probe = os.path.join(records, "ours-resnet18-w0.25", "seed0.json")
  ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=repo)
  if ignored.returncode == 128:
    pytest.skip("not a git checkout")
  assert ignored.returncode == 1, f"{probe} is ignored by .gitignore"


def test_the_committed_arch_records_are_what_the_sweep_asks_for():
  """A library change that alters what a committed run would train shows here, not
  as a refused record hours into the next sitting's sweep."""
  diffs = committed_record_differences(model_config.get_config("arch"), model_arch.variants)
  assert {p: d for p, d in diffs.items() if d} == {}


def test_a_budget_counted_a_few_parts_per_million_apart_is_the_same_run():
  """The arch sweep's committed records hold budgets that the CPU count moved by
  8.6e-6 (2026-12-04); a budget 1% apart is another run."""
  wanted = default.get_config()
  wanted.train_flops = 18151881441280.0
  saved = json.loads(wanted.to_json_best_effort())
  saved["train_flops"] = 18152037089280.0
  assert sweep.config_differences(saved, wanted) == []
  saved["train_flops"] = 1.01 * wanted.train_flops
  assert [d.split(":")[0] for d in sweep.config_differences(saved, wanted)] == ["train_flops"]


def test_a_report_names_every_machine_its_runs_were_made_on():
  from experiments.sweep import report
  here, there = "1 x cpu (Intel Xeon, 2 cores)", "1 x cpu (AMD EPYC, 2 cores)"
  assert report.device_line([{"device": here}] * 2, here) == here
  assert report.device_line([{}, {}], here) == here   # summaries from before the field
  assert (report.device_line([{"device": here}, {"device": there}, {"device": here}], here)
          == f"{here} (2 runs); {there} (1 run)")
  assert (report.device_line([{"device": here}, {}, {}], here)
          == f"{here} (1 run); not recorded (2 runs)")
  assert report.device_line([{"device": there}], here) == f"{there} (1 run)"


def test_aggregate_gives_mean_and_spread_over_seeds():
  runs = [dict(_summary(0.30), seed=0, num_params={"backbone": 5, "total": 6}),
          dict(_summary(0.34), seed=1, num_params={"backbone": 5, "total": 6})]
  row = sweep.aggregate(runs)
  assert row["knn_top1"].mean == pytest.approx(0.32)
  assert row["knn_top1"].spread == pytest.approx(0.02)
  assert row["knn_top1"].pct() == "32.00 ± 2.00"
  assert set(row["knn_top1_by_epoch"]) == {0, 2, 4}
  assert row["knn_top1_by_epoch"][2].mean == pytest.approx(0.31)
  assert row["training_seconds"].mean == pytest.approx(41.0)
  assert sweep.Stat((0.5,)).pct() == "50.00"
  assert json.loads(json.dumps(sweep.to_json(row)))["knn_top1"]["values"] == [0.30, 0.34]


def test_every_preset_of_every_experiment_is_a_valid_training_config():
  for preset in ("cpu", "gpu"):
    ablation = ablation_config.get_config(preset)
    data = data_config.get_config(preset)
    data.variants = data_config.variants(data)
    model = model_config.get_config(preset)
    model.variants = model_config.variants(model)
    recipe = recipe_config.get_config(preset)
    dtypes = bank_dtype_config.get_config(preset)
    for config in (ablation, data, model, recipe, dtypes):
      variants = sweep.parse_variants(config.variants, config.base)
      for v in variants:
        run_config.validate_config(sweep.variant_config(config.base, v, 0), num_devices=1)
    assert len(ablation.variants) == {"cpu": 14, "gpu": 16}[preset]
    # The GPU search's learning rates reach the CPU's best (0.4 per 256 images).
    rates = {sweep.variant_config(recipe.base, v, 0).optim.base_lr
             for v in sweep.parse_variants(recipe.variants, recipe.base)}
    assert max(rates) >= {"cpu": 0.2, "gpu": 0.4}[preset]
    assert len(data.variants) == 4 * len(data.fractions)
    # The recipe's head variant is the other head from its base's.
    heads = {v.name: sweep.variant_config(recipe.base, v, 0).model.head
             for v in sweep.parse_variants(recipe.variants, recipe.base)}
    other = {"linear": "mlp", "mlp": "linear"}[recipe.base.model.head]
    assert heads[f"head={other}"] == other and heads["default"] == recipe.base.model.head
    assert len(model.variants) == 4 * len(model.backbones)
    # Data efficiency: every fraction gets (at least) the same number of steps.
    for v in sweep.parse_variants(data.variants, data.base):
      n = round(v.get("data.fraction") * 50_000)
      steps = v.get("num_epochs") * (n // data.base.batch_size)
      assert data.steps <= steps < data.steps + n // data.base.batch_size
  for lib in (ablation_config, data_config, model_config, recipe_config):
    with pytest.raises(ValueError, match="preset must be"):
      lib.get_config("tpu")


@pytest.mark.parametrize("preset, new_variants", [
    ("cpu_confirm", {"head=mlp+kl_dir=p_q"}), ("cpu_sqrtkl", {"kl=0", "head=mlp+kl=0"}),
    ("cpu_tau", {"tau=0.05+rule", "head=mlp+tau=0.05+rule"}),
    ("cpu_long", {"epochs=x2+lr=x2", "epochs=x2+batch=x0.5", "epochs=x2+lr=x4"})])
def test_the_recipe_follow_ups_reuse_the_cpu_search_runs(preset, new_variants):
  search, follow_up = recipe_config.get_config("cpu"), recipe_config.get_config(preset)
  searched = {v.name: v for v in sweep.parse_variants(search.variants, search.base)}
  followed = {v.name: v for v in sweep.parse_variants(follow_up.variants, follow_up.base)}
  assert set(followed) - set(searched) == new_variants
  assert {0, 1} < set(follow_up.seeds) and follow_up.results_dir == f"experiments/recipe/{preset}"
  for name, v in followed.items():
    run = sweep.variant_config(follow_up.base, v, 1)
    run_config.validate_config(run, num_devices=1)
    if name in searched:
      # A run the cpu preset finished (its config.json) is the follow-up's run.
      saved = json.loads(sweep.variant_config(search.base, searched[name], 1).to_json_best_effort())
      assert sweep.config_differences(saved, run) == []


def test_the_temperature_follow_up_reuses_the_ablation_runs_and_follows_the_rule():
  cpu, tau = ablation_config.get_config("cpu"), ablation_config.get_config("cpu_tau")
  assert tau.results_dir == "experiments/ablation/cpu_tau"
  ablated = {v.name: v for v in sweep.parse_variants(cpu.variants, cpu.base)}
  runs = {v.name: sweep.variant_config(tau.base, v, 1)
          for v in sweep.parse_variants(tau.variants, tau.base)}
  assert set(runs) - set(ablated) == {"tau=0.05+rule", "tau=0.2+rule"}
  for name, run in runs.items():
    run_config.validate_config(run, num_devices=1)
    if name in ablated:  # a finished ablation run is this preset's run
      saved = json.loads(sweep.variant_config(cpu.base, ablated[name], 1).to_json_best_effort())
      assert sweep.config_differences(saved, run) == []
  for t in ("0.05", "0.2"):
    # Only the bank's step differs from the sweep's variant, and it follows B tau / 2.
    rule = runs[f"tau={t}+rule"]
    assert rule.bank.lr == pytest.approx(0.5 * rule.batch_size * float(t))
    assert run_config.bank_lr_note(rule) is None and run_config.bank_lr_note(runs[f"tau={t}"])
    diff = sweep.config_differences(json.loads(runs[f"tau={t}"].to_json_best_effort()), rule)
    assert len(diff) == 1 and diff[0].startswith("bank.lr:"), diff


def test_the_recipe_follow_ups_change_what_their_names_say():
  search, confirm = recipe_config.get_config("cpu"), recipe_config.get_config("cpu_confirm")
  searched = {v.name: v for v in sweep.parse_variants(search.variants, search.base)}
  confirmed = {v.name: v for v in sweep.parse_variants(confirm.variants, confirm.base)}
  both = sweep.variant_config(confirm.base, confirmed["head=mlp+kl_dir=p_q"], 0)
  assert (both.model.head, both.loss.kl_direction, both.bank.fused) == ("mlp", "p_q", False)
  mlp = sweep.variant_config(search.base, searched["head=mlp"], 0)
  assert both.model.head_hidden == mlp.model.head_hidden
  sqrtkl = recipe_config.get_config("cpu_sqrtkl")
  runs = {v.name: sweep.variant_config(sqrtkl.base, v, 0)
          for v in sweep.parse_variants(sqrtkl.variants, sqrtkl.base)}
  assert runs["default"].loss.kl_weight > 0 and runs["head=mlp"].loss.kl_weight > 0
  for name, with_kl in (("kl=0", "default"), ("head=mlp+kl=0", "head=mlp")):
    # Only the SqrtKL weight differs from the run it is compared with.
    assert runs[name].loss.kl_weight == 0.0
    diff = sweep.config_differences(json.loads(runs[with_kl].to_json_best_effort()), runs[name])
    assert len(diff) == 1 and diff[0].startswith("loss.kl_weight:"), diff
  tau = recipe_config.get_config("cpu_tau")
  runs = {v.name: sweep.variant_config(tau.base, v, 0)
          for v in sweep.parse_variants(tau.variants, tau.base)}
  for name, at_0_1 in (("tau=0.05+rule", "default"), ("head=mlp+tau=0.05+rule", "head=mlp")):
    # Only the temperature and the bank's step (B tau / 2) differ from the run at 0.1.
    assert runs[at_0_1].loss.temperature == 0.1 and runs[name].loss.temperature == 0.05
    assert runs[name].bank.lr == pytest.approx(0.5 * runs[name].batch_size * 0.05)
    assert run_config.bank_lr_note(runs[name]) is None
    diff = sweep.config_differences(json.loads(runs[at_0_1].to_json_best_effort()), runs[name])
    assert sorted(d.split(":")[0] for d in diff) == ["bank.lr", "loss.temperature"], diff
  # The linear-head run is the ablation's tau=0.05+rule (same config, another workdir).
  ablation = ablation_config.get_config("cpu_tau")
  rule = {v.name: v for v in sweep.parse_variants(ablation.variants, ablation.base)}
  saved = sweep.variant_config(ablation.base, rule["tau=0.05+rule"], 0)
  assert sweep.config_differences(json.loads(saved.to_json_best_effort()),
                                  runs["tau=0.05+rule"]) == []
  long = recipe_config.get_config("cpu_long")
  runs = {v.name: sweep.variant_config(long.base, v, 0)
          for v in sweep.parse_variants(long.variants, long.base)}
  base = runs["epochs=x2"]
  assert base.num_epochs == 2 * search.base.num_epochs
  for name, changed in (("epochs=x2+lr=x2", "optim.base_lr"), ("epochs=x2+batch=x0.5", "batch_size"),
                        ("epochs=x2+lr=x4", "optim.base_lr")):
    # The search's change, and only it (with the bank step tied to the batch), at 20 epochs.
    diff = sweep.config_differences(json.loads(base.to_json_best_effort()), runs[name])
    expected = {changed} | ({"bank.lr"} if changed == "batch_size" else set())
    assert {d.split(":")[0] for d in diff} == expected, diff
  assert runs["epochs=x2+lr=x2"].optim.base_lr == pytest.approx(2 * base.optim.base_lr)
  assert runs["epochs=x2+lr=x4"].optim.base_lr == pytest.approx(4 * base.optim.base_lr)
  assert runs["epochs=x2+batch=x0.5"].batch_size == base.batch_size // 2
  assert run_config.bank_lr_note(runs["epochs=x2+batch=x0.5"]) is None


def test_ablation_components_turn_off_to_npid_settings():
  base = default.get_config()
  config = ablation_config.get_config("cpu")
  by_name = {v.name: sweep.variant_config(config.base, v, 0)
             for v in sweep.parse_variants(config.variants, config.base)}
  none, full = by_name["none"], by_name["init+grad+kl"]
  assert (none.bank.init, none.bank.update_rule, none.loss.kl_weight) == (
      "random", "momentum", 0.0)
  assert (full.bank.init, full.bank.update_rule, full.loss.kl_weight) == (
      base.bank.init, base.bank.update_rule, base.loss.kl_weight)
  assert by_name["grad+kl"].bank.init == "random" and by_name["init"].loss.kl_weight == 0.0
  assert {c.loss.temperature for n, c in by_name.items() if not n.startswith("tau")} == {0.1}


def _results(names, knn_fn, seeds=(0, 1), **kw):
  return {n: [dict(_summary(knn_fn(n, s), **kw), seed=s,
                   num_params={"backbone": 10**6 * (i + 1), "total": 10**6 * (i + 2)})
              for s in seeds] for i, n in enumerate(names)}


def test_ablation_report_estimates_each_components_effect(tmp_path):
  config = ablation_config.get_config("cpu")
  config.results_dir = str(tmp_path)
  names = [n for n, _ in config.variants]

  def knn(name, seed):
    on = ablation_run.components_of(name) or frozenset()
    return 0.30 + 0.01 * ("init" in on) + 0.02 * ("grad" in on) + 0.03 * ("kl" in on) + 0.002 * seed

  results = _results(names, knn)
  md = ablation_run.report(config, results, "cmd")
  effects = ablation_run.main_effects({n: sweep.aggregate(s) for n, s in results.items()})
  assert {c: round(100 * s.mean, 6) for c, s in effects.items()} == {
      "init": 1.0, "grad": 2.0, "kl": 3.0}
  assert "| component | kNN ep 2 | kNN ep 4 | linear |" in md
  assert "| kl | +3.00 ± 0.00 | +3.00 ± 0.00 | +3.00 ± 0.00 |" in md
  assert "| init+grad+kl | 2 | 20.00 ± 0.00 |" in md
  # Every combination is in one pair of each component: without all 8, no effect.
  partial = {n: sweep.aggregate(s) for n, s in results.items() if n != "init+kl"}
  assert ablation_run.main_effects(partial) == {}
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["meta"]["effects"]["kNN ep 4"]["kl"]["mean"] == pytest.approx(0.03)
  if sweep.pyplot() is not None:
    assert (tmp_path / "ablation.png").stat().st_size > 1000


def test_temperature_follow_up_report_names_the_bank_step_and_has_no_effects(tmp_path):
  config = ablation_config.get_config("cpu_tau")
  config.results_dir = str(tmp_path)
  names = [n for n, _ in config.variants]
  md = ablation_run.report(config, _results(names, lambda n, s: 0.30 + 0.01 * names.index(n)),
                           "cmd")
  assert "`tau=...+rule` sets `bank.lr` to the configs' rule B tau / 2" in md
  assert "| tau=0.2+rule | 2 |" in md and "Effect of switching" not in md
  if sweep.pyplot() is not None:
    assert (tmp_path / "ablation.png").stat().st_size > 1000


def test_efficiency_reports_tabulate_methods_against_their_axis(tmp_path):
  data = data_config.get_config("cpu")
  data.results_dir = str(tmp_path / "d")
  data.fractions = (0.01, 0.025, 0.05, 0.1)
  data.variants = data_config.variants(data)
  names = [n for n, _ in data.variants]
  lead = lambda n: 0.1 * float(n.split("-f")[1]) if n.startswith("ours") else 0.0
  md = data_run.report(data, _results(names, lambda n, s: 0.3 + lead(n)), "cmd")
  assert "| ours - npid | +0.10 | +0.25 | +0.50 | +1.00 |" in md
  # A scaled bank step adds rows of ours only, named apart, with bank.lr scaled.
  data.bank_lr_scales = (0.25,)
  data.variants = data_config.variants(data)
  scaled = dict(v for v in data.variants if "banklr" in v[0])
  assert sorted(scaled) == [f"ours-f{f:g}-banklr0.25" for f in data.fractions]
  assert all(f"bank.lr={data.base.bank.lr / 4:g}" in o for o in scaled.values())
  assert len(data.variants) == 5 * len(data.fractions)
  md = data_run.report(data, _results([n for n, _ in data.variants],
                                      lambda n, s: 0.5 if "banklr" in n else 0.3), "cmd")
  assert "| ours (bank lr x0.25) |" + " 50.00 ± 0.00 (20.00 ± 0.00) |" * 4 in md
  model = model_config.get_config("cpu")
  model.results_dir = str(tmp_path / "m")
  model.backbones = (("resnet18", 0.125), ("resnet18", 0.25), ("resnet18", 0.5))
  model.variants = model_config.variants(model)
  names = [n for n, _ in model.variants]
  md = model_run.report(model, _results(names, lambda n, s: 0.35 + 0.01 * s
                                         if n.startswith("ours") else 0.3), "cmd")
  # Leads pair each seed's runs: seed 0 leads by 5 points, seed 1 by 6.
  assert "| ours - simclr |" + " +5.50 (+5.00, +6.00) |" * 3 in md
  assert "| method | resnet18 w0.125 (1.00M) | resnet18 w0.25 (2.00M) |" in md
  if sweep.pyplot() is not None:
    assert (tmp_path / "d" / "data_efficiency.png").stat().st_size > 1000
    assert (tmp_path / "m" / "model_efficiency.png").stat().st_size > 1000


def test_knn_lead_pairs_runs_of_the_same_seed():
  row = lambda seeds, knns: {"seeds": list(seeds),
                             "knn_top1": sweep.Stat(tuple(knns))}
  assert sweep.knn_lead(row((0, 1), (0.40, 0.35)), row((0, 1), (0.30, 0.34))) == (
      "+5.50 (+10.00, +1.00)")
  # Different seeds finished (or one seed): no pairing, the mean alone.
  assert sweep.knn_lead(row((0, 1), (0.40, 0.35)), row((0,), (0.30,))) == "+7.50"
  assert sweep.knn_lead(row((0,), (0.40,)), row((0,), (0.30,))) == "+10.00"


def test_tables_made_on_the_cpu_name_the_processor(tmp_path):
  from ssl_jax import devices
  info = tmp_path / "cpuinfo"
  info.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse avx avx2\n"
                  "processor\t: 1\nmodel name\t: Some CPU 9000\nflags\t\t: fpu\n")
  assert devices.processor_name(str(info)) == "Some CPU 9000 (avx2)"
  info.write_text("processor\t: 0\n")
  assert devices.processor_name(str(info)) == "unknown"
  assert devices.processor_name(str(tmp_path / "none")) == "unknown"
  meta = sweep.describe(_sweep_config((("a", ""),)), {"a": [dict(_summary(0.3), seed=0)]}, "cmd")
  import jax
  assert meta["device"] == (f"{jax.device_count()} x cpu ({devices.processor_name()}, "
                            f"{os.cpu_count()} cores)")


@pytest.mark.slow
@needs_cifar10
def test_a_real_sweep_trains_its_overrides_and_reuses_finished_runs(tmp_path):
  config = _sweep_config((("npid-like", "bank.init=random bank.update_rule=momentum "
                                        "loss.kl_weight=0.0"),), seeds=(0,))
  config.base = tiny_config(**{"eval.linear_epochs": 1})
  [summary] = sweep.run_sweep(config, str(tmp_path), log=lambda s: None)["npid-like"]
  with open(tmp_path / "npid-like" / "seed0" / "config.json") as f:
    saved = json.load(f)
  assert (saved["bank"]["init"], saved["loss"]["kl_weight"]) == ("random", 0.0)
  assert 0.1 < summary["knn_top1"] <= 1.0
  # The real train writes a config.json the sweep accepts, so nothing is retrained.
  [again] = sweep.run_sweep(config, str(tmp_path), log=lambda s: None,
                            train_fn=lambda *a: pytest.fail("retrained"))["npid-like"]
  assert again["knn_top1"] == summary["knn_top1"]


def test_equal_time_interpolates_knn_at_the_shortest_runs_seconds():
  fast = _summary(0.40)                       # evaluations at 0, 21 and 41 s
  slow = _summary(0.50)
  for r in slow["history"]:
    r["epoch_seconds"] *= 2                   # 0, 42 and 82 s
  assert sweep.seconds_by_epoch(fast) == {0: 0.0, 1: 11.0, 2: 21.0, 3: 31.0, 4: 41.0}
  assert sweep.knn_at_seconds(fast, 31.0) == pytest.approx(0.395)
  assert sweep.knn_at_seconds(fast, 10.5) == pytest.approx(0.2 + 0.19 / 2)
  assert sweep.knn_at_seconds(fast, 1e9) == 0.40
  budget, at = sweep.equal_time({"fast": [fast], "slow": [slow]})
  assert budget == 41.0
  assert at["fast"].mean == 0.40
  # The slow run is between its untrained (0 s) and epoch-2 (42 s) evaluations.
  assert at["slow"].mean == pytest.approx(0.2 + 0.29 * 41 / 42)


def test_recipe_report_ranks_at_equal_epochs_and_at_equal_time(tmp_path):
  config = recipe_config.get_config("cpu")
  config.results_dir = str(tmp_path)
  config.variants = (("default", ""), ("slow_but_better", ""), ("worse", ""))
  results = _results(["default", "slow_but_better", "worse"],
                     lambda n, s: {"default": 0.40, "slow_but_better": 0.45, "worse": 0.35}[n])
  for s in results["slow_but_better"]:
    for r in s["history"]:
      r["epoch_seconds"] *= 4
  md = recipe_run.report(config, results, "cmd")
  # Best at equal epochs, last at equal time (at 41 s it has not reached its epoch 2).
  assert "| slow_but_better | 45.00 ± 0.00 | +5.00 |" in md
  assert md.index("| slow_but_better | 45.00") < md.index("| default | 40.00")
  row = next(line for line in md.splitlines() if line.startswith("| slow_but_better | 45.00"))
  assert row.endswith("| 3 |")
  # Without a `default` (cpu_long), changes are measured from the preset's first variant.
  del results["default"]
  config.results_dir = str(tmp_path / "no_default")
  md = recipe_run.report(config, results, "cmd")
  assert "change from `slow_but_better`" in md and "| worse | 35.00 ± 0.00 | -10.00 |" in md


def test_a_partial_report_names_only_the_seeds_that_finished(tmp_path):
  config = model_config.get_config("cpu")
  config.results_dir = str(tmp_path)
  config.variants = model_config.variants(config)
  assert tuple(config.seeds) == (0, 1)
  names = [n for n, _ in config.variants]
  md = model_run.report(config, _results(names, lambda n, s: 0.3, seeds=(0,)), "cmd")
  assert "seeds [0]." in md and "seeds [0, 1]" not in md


def test_a_report_says_which_columns_have_fewer_seeds(tmp_path):
  config = model_config.get_config("cpu_wide")
  config.results_dir = str(tmp_path)
  config.variants = model_config.variants(config)
  names = [n for n, _ in config.variants]
  results = _results(names, lambda n, s: 0.3)
  # Seed 1 of width 1/2 has not run: the header keeps both seeds, the line names the column.
  partial = {n: runs[:1] if n.endswith("w0.5") else runs for n, runs in results.items()}
  md = model_run.report(config, partial, "cmd")
  assert "seeds [0, 1]." in md
  assert "Fewer seeds finished in some columns: resnet18 w0.5: seed 0 only." in md
  assert "| ours - simclr | +0.00 (+0.00, +0.00) | +0.00 (+0.00, +0.00) | +0.00 |" in md
  # Methods of one column that differ are named one by one.
  partial["ours-resnet18-w0.5"] = results["ours-resnet18-w0.5"]
  md = model_run.report(config, partial, "cmd")
  assert ("resnet18 w0.5: npid seed 0 only, simclr seed 0 only, byol seed 0 only." in md)
  assert "Fewer seeds" not in model_run.report(config, results, "cmd")


def test_every_sweep_report_names_the_rows_with_fewer_seeds(tmp_path):
  ablation = ablation_config.get_config("cpu")
  recipe = recipe_config.get_config("cpu")
  recipe.variants = (("default", ""), ("t0.2", ""))
  data = data_config.get_config("cpu")
  data.fractions = (0.01, 0.05)
  data.variants = data_config.variants(data)
  cases = [(ablation_run, ablation, "init+kl", "rows: init+kl: seed 1 only."),
           (recipe_run, recipe, "t0.2", "rows: t0.2: seed 1 only."),
           (data_run, data, "byol-f0.05", "columns: 5%: byol seed 1 only.")]
  for i, (run, config, short, line) in enumerate(cases):
    config.results_dir = str(tmp_path / str(i))
    results = _results([n for n, _ in config.variants], lambda n, s: 0.3 + 0.01 * s)
    assert "Fewer seeds" not in run.report(config, results, "cmd")
    results[short] = results[short][1:]
    md = run.report(config, results, "cmd")
    assert "seeds [0, 1]." in md and f"Fewer seeds finished in some {line}" in md, md[:1500]


def test_the_architecture_sweep_gives_every_backbone_its_optimizer_and_one_budget(tmp_path):
  config = model_config.get_config("arch")
  config.budget = 1.5e13            # given: no step is compiled to count the budget's FLOPs
  config.results_dir = str(tmp_path)
  config.variants = model_arch.variants(config)
  runs = {v.name: sweep.variant_config(config.base, v, 1)
          for v in sweep.parse_variants(config.variants, config.base)}
  assert sorted(runs) == sorted(f"{m}-{b}" for m in ("ours", "simclr", "byol")
                                for b in ("resnet18-w0.25", "mobilenet_v2-w0.5", "vit_tiny-w0.25"))
  for name, run in runs.items():
    run_config.validate_config(run, num_devices=1)
    assert run.train_flops == 1.5e13 and run.model.head_hidden == 512 and run.seed == 1
    assert run_config.optim_note(run) is None, name      # the backbone's usual optimizer
  assert (runs["ours-vit_tiny-w0.25"].optim.name, runs["ours-vit_tiny-w0.25"].optim.base_lr,
          runs["ours-vit_tiny-w0.25"].model.patch_size) == ("adamw", 5e-4, 4)
  assert runs["simclr-mobilenet_v2-w0.5"].optim.name == "sgd"
  assert runs["byol-resnet18-w0.25"].optim.base_lr == config.base.optim.base_lr
  names = [n for n, _ in config.variants]
  results = _results(names, lambda n, s: 0.35 + 0.01 * s if n.startswith("ours") else 0.3)
  for runs_of in results.values():
    for r in runs_of:
      r.update(flops_per_image=1.9e8, train_flops=1.5e13)
  md = model_arch.report(config, results, "cmd")
  assert "Budget: 1.5e+13 training FLOPs per run (simclr's 10 epochs on" in md
  assert "| simclr | vit_tiny w0.25 |" in md and "| +5.50 (+5.00, +6.00) |" in md
  if sweep.pyplot() is not None:
    assert (tmp_path / "arch.png").stat().st_size > 1000


def test_the_wide_model_preset_reuses_the_cpu_runs():
  cpu, wide = model_config.get_config("cpu"), model_config.get_config("cpu_wide")
  runs = {}
  for config in (cpu, wide):
    config.variants = model_config.variants(config)
    runs[config.preset] = {v.name: sweep.variant_config(config.base, v, 1)
                           for v in sweep.parse_variants(config.variants, config.base)}
  assert set(runs["cpu_wide"]) - set(runs["cpu"]) == {
      f"{m}-resnet18-w0.5" for m in model_config.METHODS}
  assert wide.results_dir == "experiments/model_efficiency/cpu_wide"
  for name, run in runs["cpu_wide"].items():
    run_config.validate_config(run, num_devices=1)
    if name in runs["cpu"]:
      # A run the cpu preset finished (its config.json) is the wide preset's run.
      saved = json.loads(runs["cpu"][name].to_json_best_effort())
      assert sweep.config_differences(saved, run) == []
    else:
      assert (run.model.width, run.num_epochs) == (0.5, runs["cpu"]["ours-resnet18-w0.25"].num_epochs)


def test_recipe_report_pairs_runs_of_the_same_seed(tmp_path):
  config = recipe_config.get_config("cpu_sqrtkl")
  config.results_dir = str(tmp_path)
  knn = {"default": (0.40, 0.42, 0.41), "kl=0": (0.41, 0.40, 0.40),
         "head=mlp": (0.45, 0.45, 0.45), "head=mlp+kl=0": (0.44, 0.46, 0.50)}
  results = _results(list(knn), lambda n, s: knn[n][s], seeds=(0, 1, 2))
  results["head=mlp+kl=0"].pop()  # seed 2 unfinished: that pair has seeds 0 and 1
  md = recipe_run.report(config, results, "cmd")
  # Per seed -1, +2, +1 points at every evaluation (epoch 2, 4) and on the linear probe.
  assert ("| default - kl=0 | +0.67 ± 1.50 | +0.67 ± 1.50 | +0.67 ± 1.50 | -1.00, +2.00, +1.00 "
          "| 2 of 3 |") in md
  assert "| head=mlp - head=mlp+kl=0 | +0.00 ± 1.00 |" in md and "| +1.00, -1.00 | 1 of 2 |" in md
  with open(tmp_path / "results.json") as f:
    pairs = json.load(f)["meta"]["pairs"]
  assert pairs["default - kl=0"]["kNN ep 4"]["values"] == pytest.approx([-0.01, 0.02, 0.01])
  # Presets without pairs keep their report as it was.
  config = recipe_config.get_config("cpu")
  config.results_dir = str(tmp_path / "cpu")
  assert "Paired" not in recipe_run.report(config, results, "cmd")


def test_the_bank_dtype_report_pairs_runs_by_seed():
  run = lambda seed, knn, bank: {"seed": seed, "knn_top1": knn, "knn_top1_bank": bank,
                                 "linear_top1": 0.4}
  results = {"float32": [run(0, 0.30, 0.28), run(1, 0.32, 0.30), run(2, 0.31, 0.29)],
             "bfloat16": [run(1, 0.33, 0.27), run(0, 0.29, 0.28)]}   # seed 2 unfinished
  diffs = bank_dtype_run.paired_differences(results)
  np.testing.assert_allclose(diffs["knn_top1"].values, [-0.01, 0.01])
  np.testing.assert_allclose(diffs["knn_top1_bank"].values, [0.0, -0.03])
  assert diffs["linear_top1"].values == (0.0, 0.0)
  assert bank_dtype_run.paired_differences({"float32": results["float32"]}) == {}
