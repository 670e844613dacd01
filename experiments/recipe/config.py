"""Recipe search: the knobs the paper leaves open, one at a time around the defaults.

    python -m experiments.recipe.run --config experiments/recipe/config.py:cpu --workdir runs/recipe_cpu
    python -m experiments.recipe.run --config experiments/recipe/config.py:gpu --workdir runs/recipe_gpu
    python -m experiments.recipe.run --config experiments/recipe/config.py:cpu_confirm --workdir runs/recipe_cpu
    python -m experiments.recipe.run --config experiments/recipe/config.py:cpu_tau --workdir runs/recipe_cpu
    python -m experiments.recipe.run --config experiments/recipe/config.py:cpu_long --workdir runs/recipe_cpu

The temperature, the SqrtKL weight and the bank learning rate are swept by
`experiments/ablation`; this sweeps the rest: SqrtKL direction and
stop-gradient, linear or MLP projection head, learning rate, batch size,
augmentation strength and schedule length. Every variant is the method
(`method=ours`) with one change; the report ranks them at equal epochs and
at equal wall-clock.

`cpu_confirm` reruns the CPU preset's leaders with five seeds, and the two
together: `default`, `head=mlp`, `kl_dir=p_q` and `head=mlp+kl_dir=p_q`. Its
variants are the `cpu` preset's under the same names, so in the `cpu`
preset's workdir its seeds 0 and 1 are those finished runs, not recomputed.

`cpu_sqrtkl` asks whether SqrtKL earns its place in the recipe: the method
with and without it (`kl=0`), with the linear head and with the MLP head,
seeds 0-4. In the same workdir, `default` and `head=mlp` are the
confirmation's finished runs.

`cpu_tau` confirms the ablation's `cpu_tau` finding (temperature 0.05 beats
0.1 once the bank's step follows B tau / 2) with five seeds, for the linear
head and for the MLP head the recipe uses: `default`, `tau=0.05+rule`,
`head=mlp` and `head=mlp+tau=0.05+rule`. In the same workdir, `default`
and `head=mlp` are the confirmation's finished runs.

`cpu_long` asks whether the search's faster-learning changes (double
learning rate, half the batch) still help with twice the schedule, or only
get further in 10 epochs: `epochs=x2` (the search's), `epochs=x2+lr=x2` and
`epochs=x2+batch=x0.5`, and `epochs=x2+lr=x4` (beyond the search's range),
seeds 0-2.
"""

import ml_collections

from experiments import sweep
from experiments.ablation import config as ablation_config


def recipe_variants(base: ml_collections.ConfigDict) -> tuple:
  lr, bank_lr, batch = base.optim.base_lr, base.bank.lr, base.batch_size
  return (
      ("default", "method=ours"),
      # No closed-form logit gradient: the fused pass and its chunks (on in the GPU
      # base) are refused, so these variants take autodiff through the loss.
      ("kl_dir=p_q", "method=ours loss.kl_direction=p_q bank.fused=false bank.chunk_rows=0"),
      ("kl_sg=off", "method=ours loss.kl_stop_gradient=false bank.fused=false bank.chunk_rows=0"),
      # The other head from the base's: the GPU base (configs/cifar10.py) already
      # has the MLP head that won on the CPU preset.
      (("head=linear", "method=ours model.head=linear") if base.model.head == "mlp" else
       ("head=mlp", f"method=ours model.head=mlp model.head_hidden={4 * base.model.embed_dim}")),
      ("lr=x0.5", f"method=ours optim.base_lr={lr / 2}"),
      ("lr=x2", f"method=ours optim.base_lr={lr * 2}"),
      # The bank's step size is tied to the batch (eta_V = B tau / 2).
      ("batch=x0.5", f"method=ours batch_size={batch // 2} bank.lr={bank_lr / 2}"),
      ("crop=0.08", "method=ours augment.crop_scale=(0.08,1.0)"),
      ("crop=0.35", "method=ours augment.crop_scale=(0.35,1.0)"),
      ("jitter=x0.5", "method=ours augment.jitter=(0.2,0.2,0.2,0.05)"),
      ("epochs=x2", f"method=ours num_epochs={2 * base.num_epochs}"),
  )


def both(first: str, second: str) -> str:
  """Two variants' overrides together (each starts with `method=ours`; it is kept once)."""
  return first + second.removeprefix("method=ours")


def lr_variant(base: ml_collections.ConfigDict, factor: float) -> tuple:
  """`lr=x<factor>`: the method at `factor` times the base's learning rate."""
  return (f"lr=x{factor:g}", f"method=ours optim.base_lr={factor * base.optim.base_lr:.4g}")


def confirm_variants(base: ml_collections.ConfigDict) -> tuple:
  """The CPU search's leaders (the same names and overrides) and the two changes together."""
  search = dict(recipe_variants(base))
  leaders = tuple((name, search[name]) for name in ("default", "head=mlp", "kl_dir=p_q"))
  return leaders + (("head=mlp+kl_dir=p_q", both(search["head=mlp"], search["kl_dir=p_q"])),)


def sqrtkl_variants(base: ml_collections.ConfigDict) -> tuple:
  """The method and its MLP-head recipe, each with and without SqrtKL."""
  search = dict(recipe_variants(base))
  no_kl = " loss.kl_weight=0.0"
  return (("default", search["default"]), ("kl=0", search["default"] + no_kl),
          ("head=mlp", search["head=mlp"]), ("head=mlp+kl=0", search["head=mlp"] + no_kl))


def tau_variants(base: ml_collections.ConfigDict) -> tuple:
  """The method and its MLP-head recipe, each at temperature 0.1 and at 0.05.

  At 0.05 `bank.lr` follows the configs' rule B tau / 2 (half the default's
  step, which is an absolute step size): the ablation's `tau=0.05+rule`.
  """
  search = dict(recipe_variants(base))
  name = "tau=0.05+rule"
  rule = dict(ablation_config.rule_tau_variants(base))[name]
  return (("default", search["default"]), (name, both(search["default"], rule)),
          ("head=mlp", search["head=mlp"]), (f"head=mlp+{name}", both(search["head=mlp"], rule)))


def long_variants(base: ml_collections.ConfigDict) -> tuple:
  """Twice the epochs, alone and with the search's double learning rate or half batch.

  And with four times the learning rate: whether the rate's optimum lies
  beyond the search's range.
  """
  search = dict((*recipe_variants(base), lr_variant(base, 4)))
  longer = search["epochs=x2"]
  return (("epochs=x2", longer),
          *((f"epochs=x2+{name}", both(longer, search[name]))
            for name in ("lr=x2", "batch=x0.5", "lr=x4")))


# Presets that rerun variants of the cpu search with more seeds (five, or
# _SEEDS's): their variants keep the search's names and overrides, so its
# finished runs are reused.
_CPU_FOLLOW_UPS = {"cpu_confirm": confirm_variants, "cpu_sqrtkl": sqrtkl_variants,
                   "cpu_tau": tau_variants, "cpu_long": long_variants}
# Paired comparisons (a, b) the report tabulates as a - b per seed.
_PAIRS = {
    "cpu_confirm": (("head=mlp", "default"), ("kl_dir=p_q", "default"),
                    ("head=mlp+kl_dir=p_q", "default")),
    # SqrtKL's effect with each head.
    "cpu_sqrtkl": (("default", "kl=0"), ("head=mlp", "head=mlp+kl=0")),
    # Temperature 0.05 (with the rule's bank step) against 0.1, with each head.
    "cpu_tau": (("tau=0.05+rule", "default"), ("head=mlp+tau=0.05+rule", "head=mlp")),
    # The search's 10-epoch gains of each change, now at 20 epochs.
    "cpu_long": (("epochs=x2+lr=x2", "epochs=x2"), ("epochs=x2+batch=x0.5", "epochs=x2"),
                 ("epochs=x2+lr=x4", "epochs=x2")),
}
# Twice as long a run: three seeds (seeds 0 and 1 of epochs=x2 are the search's).
_SEEDS = {"cpu_long": (0, 1, 2)}


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  if preset not in ("cpu", "gpu", *_CPU_FOLLOW_UPS):
    raise ValueError("preset must be 'cpu', 'gpu', 'cpu_confirm', 'cpu_sqrtkl', 'cpu_tau' or "
                     f"'cpu_long', got {preset!r}.")
  follow_up = _CPU_FOLLOW_UPS.get(preset)
  # The ablation's base: its `default` variant is the ablation's `init+grad+kl`.
  base = ablation_config.base_config("cpu" if follow_up else preset)
  config = sweep.experiment_config("recipe", preset, base)
  config.variants = follow_up(base) if follow_up else recipe_variants(base)
  config.pairs = _PAIRS.get(preset, ())
  if preset == "gpu":
    # Found on CPU (cpu_long): the method's best learning rate there, 0.4 per
    # 256 images (the largest tried), is 13x this base's 0.03, beyond lr=x2.
    config.variants += tuple(lr_variant(base, k) for k in (4, 8, 16))
  if follow_up:
    # Seeds 0 and 1 of the search's variants are the cpu preset's runs.
    config.seeds = _SEEDS.get(preset, (0, 1, 2, 3, 4))
  return config
