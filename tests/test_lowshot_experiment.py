"""experiments/lowshot: its variants (pretraining, fine-tuning from each seed's run, from
scratch), the sweep's {seed}/{workdir} for init_from, and the report; the smoke preset
end to end in `-m slow`."""

import json
import os

import pytest

from experiments import sweep
from experiments.lowshot import config as config_lib
from experiments.lowshot import run as lowshot
from tests.helpers import committed_record_differences, needs_cifar10, run_experiment

def test_fine_tuning_runs_take_the_same_steps_on_the_labelled_images():
  config = config_lib.get_config("cpu")
  assert [lowshot.labelled(config, f) for f in config.fractions] == [50, 500, 5000]
  for f, batch, epochs in ((0.01, 48, 100), (0.1, 248, 50), (1.0, 248, 5)):
    fields = dict(item.split("=", 1) for item in lowshot.finetune_overrides(config, f).split())
    assert fields["method"] == "supervised" and float(fields["data.label_fraction"]) == f
    assert (int(fields["batch_size"]), int(fields["num_epochs"])) == (batch, epochs)
    assert int(fields["num_epochs"]) * (lowshot.labelled(config, f) // batch) >= 100


def test_a_variant_names_its_seeds_pretrained_run_and_records_survive_another_workdir(tmp_path):
  base = config_lib.get_config("smoke").base
  trained = []
  config = sweep.experiment_config("t", "cpu", base)
  config.variants = (("ft", "method=supervised init_from={workdir}/ours/seed{seed}"),)
  config.seeds = (0, 1)

  def fake_train(run_config, workdir):
    trained.append(run_config.init_from)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(run_config.to_json_best_effort())
    return {"knn_top1": 0.5}
  sweep.run_sweep(config, str(tmp_path / "w"), log=lambda *a: None, train_fn=fake_train)
  assert trained == [f"{tmp_path}/w/ours/seed0", f"{tmp_path}/w/ours/seed1"]
  saved = json.loads((tmp_path / "w" / "ft" / "seed1" / "config.json").read_text())
  wanted = sweep.variant_config(base, sweep.parse_variants(config.variants, base)[0], 1)
  wanted.init_from = "/elsewhere/runs/ours/seed1"
  assert sweep.config_differences(saved, wanted) == []
  wanted.init_from = "/elsewhere/runs/ours/seed0"
  assert sweep.config_differences(saved, wanted) == [
      "init_from: run has 'ours/seed1', sweep wants 'ours/seed0'"]


def _run(seed, **fields):
  return {"seed": seed, **fields}


def test_the_report_reads_probes_at_the_seeds_own_draw_and_fine_tunes_by_classifier(tmp_path):
  config = config_lib.get_config("cpu")
  config.results_dir = str(tmp_path / "out")
  config.budget = 1e12
  probe = lambda v1, v10: {"labels_1%": {"linear_top1": {"values": v1}},
                           "labels_10%": {"linear_top1": {"values": v10}}}
  pre = lambda seed: dict(
      seed=seed, linear_top1=0.6, knn_top1=0.5, lowshot=probe([0.2, 0.3, 0.9], [0.4, 0.5, 0.9]),
      epochs=10, num_train_examples=5000, num_test_examples=2000, dataset="folder:x",
      flops_per_image=1e9)
  results = {"ours": [pre(0), pre(1)], "simclr": [],
             "ours-ft-f0.01": [_run(0, classifier_top1=0.25), _run(1, classifier_top1=0.35)],
             "supervised-f1": [_run(0, classifier_top1=0.7)]}
  rows = lowshot.table(config, results)
  assert rows["ours: linear probe"][0.01].values == (0.2, 0.3)      # draw k for seed k
  assert rows["ours: linear probe"][0.1].values == (0.4, 0.5)
  assert rows["ours: linear probe"][1.0].values == (0.6, 0.6)
  assert rows["ours: fine-tuned"][0.01].values == (0.25, 0.35)
  assert rows["simclr: fine-tuned"][0.01] is None
  md = lowshot.report(config, results, "cmd")
  assert "| ours: fine-tuned | 30.00 ± 5.00 | - | - |" in md
  assert "| supervised from scratch | - | - | 70.00 (1 seeds) |" in md
  assert "1% (50 labels)" in md


@pytest.mark.slow
@needs_cifar10
def test_the_smoke_preset_pretrains_fine_tunes_and_trains_from_scratch(tmp_path):
  proc = run_experiment("lowshot", "smoke", tmp_path / "runs",
                        f"--config.results_dir={tmp_path / 'out'}")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
  for name in ("ours: linear probe", "ours: fine-tuned", "simclr: fine-tuned",
               "supervised from scratch"):
    assert set(rows[name]) == {"0.1", "1"}, (name, rows[name])
  ft = json.loads((tmp_path / "runs" / "ours-ft-f0.1" / "seed0" / "config.json").read_text())
  assert ft["init_from"] == str(tmp_path / "runs" / "ours" / "seed0")
  assert "encoder backbone from" in proc.stdout + proc.stderr


def test_the_committed_records_are_what_the_sweep_asks_for():
  """Every committed record (pretraining, fine-tuning, from scratch) is a run the cpu
  preset's sweep would reuse; skipped until the first record is committed."""
  diffs = committed_record_differences(config_lib.get_config("cpu"), lowshot.variants)
  assert {p: d for p, d in diffs.items() if d} == {}
