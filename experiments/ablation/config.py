"""Ablation of the method's three components on top of NPID, and sweeps of its knobs.

    python -m experiments.ablation.run --config experiments/ablation/config.py:cpu --workdir runs/ablation_cpu
    python -m experiments.ablation.run --config experiments/ablation/config.py:gpu --workdir runs/ablation_gpu
    python -m experiments.ablation.run --config experiments/ablation/config.py:cpu_tau --workdir runs/ablation_cpu

Components: `init` (the bank from one forward pass of the untrained network
instead of random unit rows), `grad` (the gradient bank update instead of
NPID's momentum update), `kl` (SqrtKL, weight 1, added to the
cross-entropy). Variant `none` is NPID except for its temperature: every
variant uses the same temperature (0.1), so only the named components
differ; `init+grad+kl` is the method. The sweeps change one knob of the
full method at a time.

Any field can be overridden, e.g. `--config.seeds=(0,1,2)` or
`--config.base.num_epochs=20`.
"""

import ml_collections

from experiments import sweep
from ssl_jax import run_config

# Each component off: its NPID setting.
_OFF = {"init": "bank.init=random", "grad": "bank.update_rule=momentum",
        "kl": "loss.kl_weight=0.0"}
_COMBOS = ("none", "init", "grad", "kl", "init+grad", "init+kl", "grad+kl", "init+grad+kl")


def component_variants() -> tuple:
  """The 2^3 on/off combinations: (name, overrides turning the others off)."""
  out = []
  for name in _COMBOS:
    on = set(name.split("+")) - {"none"}
    out.append((name, "method=ours " + " ".join(_OFF[c] for c in _OFF if c not in on)))
  return tuple(out)


def sweep_variants(bank_lr: float) -> tuple:
  """One knob of the full method at a time (its default is `init+grad+kl`)."""
  return (
      ("kl=0.5", "method=ours loss.kl_weight=0.5"),
      ("kl=2", "method=ours loss.kl_weight=2.0"),
      ("bank_lr=x0.25", f"method=ours bank.lr={bank_lr / 4}"),
      ("bank_lr=x4", f"method=ours bank.lr={bank_lr * 4}"),
      ("tau=0.05", "method=ours loss.temperature=0.05"),
      ("tau=0.2", "method=ours loss.temperature=0.2"),
  )


def rule_tau_variants(base: ml_collections.ConfigDict) -> tuple:
  """Temperatures 0.05 and 0.2 with bank.lr at the configs' rule B tau / 2 for each."""
  return tuple((f"tau={tau}+rule", f"method=ours loss.temperature={tau} "
                                   f"bank.lr={run_config.bank_lr_rule(base.batch_size, tau)}")
               for tau in (0.05, 0.2))


def tau_variants(base: ml_collections.ConfigDict) -> tuple:
  """The temperature sweep with the bank's step following the configs' rule B tau / 2.

  `bank.lr` is an absolute step, so the sweep's `tau=0.05` and `tau=0.2`
  (which keep the default's bank.lr) also move the bank 2x and 0.5x as far
  as the rule would: `+rule` changes only the temperature's own role.
  Beside them, the method and the sweep's variants under the same names, so
  in the cpu preset's workdir those are its finished runs.
  """
  fixed = dict(sweep_variants(base.bank.lr))
  return (("init+grad+kl", dict(component_variants())["init+grad+kl"]),
          ("tau=0.05", fixed["tau=0.05"]), ("tau=0.2", fixed["tau=0.2"]),
          *rule_tau_variants(base))


def base_config(preset: str) -> ml_collections.ConfigDict:
  """The training config every variant starts from (also the recipe search's)."""
  base = sweep.preset_base(preset)
  if preset == "cpu":
    # ResNet-18 width 1/4, 5,000 CIFAR-10 images, 10 epochs: about 4 minutes
    # a run on 2 CPU cores, 28 runs (14 variants x 2 seeds).
    base.num_epochs, base.eval.every_epochs = 10, 2
  else:
    # ResNet-18 (bf16) on all 50,000 train images, 50 epochs: one GPU.
    base.num_epochs, base.eval.every_epochs = 50, 5
  return base


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  if preset not in ("cpu", "gpu", "cpu_tau"):
    raise ValueError(f"preset must be 'cpu', 'gpu' or 'cpu_tau', got {preset!r}.")
  base = base_config("cpu" if preset == "cpu_tau" else preset)
  config = sweep.experiment_config("ablation", preset, base)
  if preset == "cpu_tau":
    config.variants = tau_variants(base)
  else:
    config.variants = component_variants() + sweep_variants(base.bank.lr)
  if preset == "gpu":
    # Found on CPU (cpu_tau): the temperature only means something with the
    # bank's step following it, so the GPU sweep has both.
    config.variants += rule_tau_variants(base)
  return config
