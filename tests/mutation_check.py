"""Planted bugs, one at a time: which does the fast test suite catch?

    python tests/mutation_check.py                  # every mutant against its tests
    python tests/mutation_check.py --without tests/test_augment_reference.py,tests/test_reference_variants.py

Each mutant is one realistic bug in a core module (losses, bank, augmentation,
methods, evaluation) or in how a run keeps its files in a bucket: the source line is replaced, the tests that cover that
module run (`pytest -x`), the file is restored. A mutant is killed when a test
fails. `--without` leaves test files out (the suite as it was before them), so
the two runs give the kill rate before and after. Writes a Markdown table to
`--out` (default tests/mutation_results.md) and prints it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

AUGMENT_TESTS = ["tests/test_augment_and_models.py", "tests/test_augment_reference.py"]
LOSS_TESTS = ["tests/test_losses_and_bank.py", "tests/test_reference_variants.py",
              "tests/test_fused_bank.py::test_fused_pass_matches_float64_reference"]
STEP_TESTS = ["tests/test_baseline_losses.py", "tests/test_step_losses.py",
              "tests/test_train_step.py"]
EVAL_TESTS = ["tests/test_evaluate_and_reporting.py", "tests/test_reference_variants.py",
              "tests/test_sharded_evaluation.py"]
GCS_TESTS = ["tests/test_gcs.py"]

# (name, file, text to replace, replacement, tests)
MUTANTS = [
    ("contrast blended around each pixel's gray", "ssl_jax/augment.py",
     "x = jnp.clip((x - jnp.mean(_gray(x))) * u(kc, c) + jnp.mean(_gray(x)), 0.0, 1.0)",
     "x = jnp.clip((x - _gray(x)) * u(kc, c) + _gray(x), 0.0, 1.0)", AUGMENT_TESTS),
    ("saturation blended around the image's mean gray", "ssl_jax/augment.py",
     "x = jnp.clip((x - _gray(x)) * u(ks, s) + _gray(x), 0.0, 1.0)",
     "x = jnp.clip((x - jnp.mean(_gray(x))) * u(ks, s) + jnp.mean(_gray(x)), 0.0, 1.0)",
     AUGMENT_TESTS),
    ("brightness added instead of multiplied", "ssl_jax/augment.py",
     "x = jnp.clip(x * u(kb, b), 0.0, 1.0)", "x = jnp.clip(x + u(kb, b) - 1.0, 0.0, 1.0)",
     AUGMENT_TESTS),
    ("hue shift range doubled", "ssl_jax/augment.py",
     "shift = jax.random.uniform(kh, (), minval=-hue, maxval=hue)",
     "shift = jax.random.uniform(kh, (), minval=-2 * hue, maxval=2 * hue)", AUGMENT_TESTS),
    ("luma weights of red and blue swapped", "ssl_jax/augment.py",
     "[0.299, 0.587, 0.114]", "[0.114, 0.587, 0.299]", AUGMENT_TESTS),
    ("every instance of a batch gets the same view", "ssl_jax/augment.py",
     "keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)",
     "keys = jax.vmap(lambda i: key)(idx)", AUGMENT_TESTS),
    ("flip with probability 0.2", "ssl_jax/augment.py",
     "jax.random.bernoulli(k_flip)", "jax.random.bernoulli(k_flip, 0.2)", AUGMENT_TESTS),
    ("crop aspect ratio ignored", "ssl_jax/augment.py",
     "aspect = jnp.exp(log_r)", "aspect = jnp.exp(0.0 * log_r)", AUGMENT_TESTS),
    ("crop area drawn from twice the scale", "ssl_jax/augment.py",
     "area = h * w * jax.random.uniform(k_area, (), minval=scale[0], maxval=scale[1])",
     "area = h * w * jax.random.uniform(k_area, (), minval=scale[0], maxval=2 * scale[1])",
     AUGMENT_TESTS),
    ("blur kernel not normalised", "ssl_jax/augment.py", "  k = k / jnp.sum(k)\n", "\n",
     AUGMENT_TESTS),
    ("two views from one key", "ssl_jax/steps.py",
     "augment.augment_batch(jax.random.fold_in(key, v), image(v), idx, aug_cfg)",
     "augment.augment_batch(key, image(v), idx, aug_cfg)",
     ["tests/test_two_views.py", "tests/test_step_losses.py", "tests/test_train_step.py"]),
    ("BYOL regresses each view onto its own target", "ssl_jax/methods/byol.py",
     "return byol_loss(p[:b], p[b:], t[:b], t[b:])", "return byol_loss(p[:b], p[b:], t[b:], t[:b])",
     STEP_TESTS),
    ("SimCLR step with the bank's temperature", "ssl_jax/methods/simclr.py",
     "temperature=float(ctx.config.simclr.temperature)",
     "temperature=float(ctx.config.loss.temperature)", STEP_TESTS),
    ("BYOL target normalised with its running statistics", "ssl_jax/methods/byol.py",
     "(_, t), _ = model.apply(state.extra, x, train=True, mutable=[\"batch_stats\"])",
     "(_, t), _ = model.apply(state.extra, x, train=False, mutable=[\"batch_stats\"])",
     STEP_TESTS),
    ("kNN votes from k + 1 neighbours", "ssl_jax/evaluate/knn.py",
     "top_sim, label = -neg_sim[:, :k], label[:, :k]",
     "top_sim, label = -neg_sim[:, :k + 1], label[:, :k + 1]", EVAL_TESTS),
    ("kNN ties to the higher index", "ssl_jax/evaluate/knn.py",
     "neg_sim, _, label = jax.lax.sort((-candidates[0], candidates[1], candidates[2]),",
     "neg_sim, _, label = jax.lax.sort((-candidates[0], -candidates[1], candidates[2]),",
     EVAL_TESTS),
    ("kNN weights ignore the temperature", "ssl_jax/evaluate/knn.py",
     "weights = jnp.exp((top_sim - top_sim[:, :1]) / temperature)",
     "weights = jnp.exp(top_sim - top_sim[:, :1])", EVAL_TESTS),
    ("autodiff bank transition without its factor B", "ssl_jax/bank_objective.py",
     "g = jax.grad(lambda s: loss_from_logits(s, idx, cfg)[0])(s) * s.shape[0]",
     "g = jax.grad(lambda s: loss_from_logits(s, idx, cfg)[0])(s)", LOSS_TESTS),
    ("SqrtKL term of the logit gradient with the wrong sign", "ssl_jax/losses.py",
     "jnp.asarray(kl_weight, jnp.float32) * (p - q)",
     "jnp.asarray(kl_weight, jnp.float32) * (q - p)", LOSS_TESTS),
    ("gradient bank update without the temperature", "ssl_jax/bank.py",
     "/ (batch * jnp.asarray(temperature, jnp.float32))", "/ batch", LOSS_TESTS),
    ("momentum update not renormalised", "ssl_jax/bank.py",
     "return bank.at[idx].set(normalize_rows(rows).astype(bank.dtype))",
     "return bank.at[idx].set(rows.astype(bank.dtype))",
     LOSS_TESTS),
    # Runs in cloud storage (tests/test_gcs.py, against the GCS emulator).
    ("workdir lock on a bucket created without its condition", "ssl_jax/storage.py",
     'fs.pipe_file(key, data, mode="create")', "fs.pipe_file(key, data)", GCS_TESTS),
    ("damaged checkpoint on a bucket deleted, not copied aside", "ssl_jax/storage.py",
     "fs.copy(src, dst, recursive=True)", "pass", GCS_TESTS),
    ("metrics log on a bucket not written before a checkpoint", "ssl_jax/loop.py",
     "      self.writer.flush()\n    except OSError", "      pass\n    except OSError",
     GCS_TESTS),
]


def run_tests(tests: list[str], without: set[str], timeout: int) -> tuple[str, float]:
  """(the first failing test, or '' if all pass; seconds) for `tests` minus `without`."""
  chosen = [t for t in tests if t.split("::")[0] not in without
            and (REPO / t.split("::")[0]).exists()]
  if not chosen:
    return "", 0.0
  t0 = time.time()
  try:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           *chosen], cwd=REPO, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return "(a hang: timed out)", time.time() - t0
  if proc.returncode == 0:
    return "", time.time() - t0
  failed = [l.split(" ")[1] for l in proc.stdout.splitlines() if l.startswith(("FAILED", "ERROR"))]
  return (failed[0] if failed else f"(exit status {proc.returncode})"), time.time() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--without", default="", help="comma-separated test files to leave out")
  parser.add_argument("--out", default="tests/mutation_results.md")
  parser.add_argument("--timeout", type=int, default=600)
  parser.add_argument("--only", default="", help="run only the mutants whose name contains this")
  args = parser.parse_args()
  without = {w for w in args.without.split(",") if w}
  rows, killed = [], 0
  for name, path, old, new, tests in MUTANTS:
    if args.only not in name:
      continue
    file = REPO / path
    source = file.read_text()
    if source.count(old) != 1:
      raise SystemExit(f"mutant {name!r}: {old!r} occurs {source.count(old)} times in {path}")
    file.write_text(source.replace(old, new))
    try:
      caught_by, seconds = run_tests(tests, without, args.timeout)
    finally:
      file.write_text(source)
    killed += bool(caught_by)
    result = f"killed by `{caught_by}`" if caught_by else "**survived**"
    rows.append(f"| {name} | `{path}` | {result} | {seconds:.0f} |")
    print(rows[-1], flush=True)
  table = "\n".join([
      f"Planted bugs: {killed} of {len(rows)} killed"
      + (f" (without {', '.join(sorted(without))})" if without else "") + ".", "",
      "| planted bug | file | result | seconds |", "| --- | --- | --- | --- |", *rows, ""])
  out = REPO / args.out
  out.write_text(table)
  print(table)


if __name__ == "__main__":
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  main()
