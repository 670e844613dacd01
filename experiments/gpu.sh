#!/usr/bin/env bash
# Every measurement that needs an accelerator, in one command:
#
#   bash experiments/gpu.sh OUT            # one H100 or H200, under 9 minutes
#   SMOKE=1 bash experiments/gpu.sh OUT    # the same steps at toy sizes, on CPU, ~3 minutes
#
# 1. benchmarks (benchmarks/config.py:gpu_core): each method's train step at
#    ResNet-18 / batch 512 / bf16 (images/s, compile seconds, FLOPs and the
#    fraction of the measured matmul peak, peak memory), the bank step fused and
#    by autodiff at N = 100k and 1.28M, the input pipeline, and an epoch with the
#    split resident on the device against one streamed from the host;
# 2. the four methods at equal training FLOPs on all 50,000 CIFAR-10 images,
#    ResNet-18 bf16, one seed (experiments/compare/config.py:gpu_flops): kNN
#    against FLOPs and against seconds.
#
# Results (JSON, Markdown, a plot) go under OUT and are printed. Each part has
# a time limit, so the whole fits the device's budget even if one part is slow;
# the benchmark writes its rows as it goes. On an H200 (2026-12-04) the
# benchmarks took 152 s and the comparison's four runs about 80, 70, 50 and 60 s,
# which 270 s did not hold (BYOL was cut off): hence 340.
#
# The GPU machine has JAX (CUDA), flax, optax, orbax, chex, numpy and Pillow,
# but no TensorFlow, TFDS or ml-collections and no network. Prepare once here
# (both folders are ignored by git; carry them: carry=[".whl", "gpu_data"]):
#
#   mkdir -p gpu_data && cp ../shared/data/cifar10-jpeg.tar.gz gpu_data/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl ml-collections==1.1.0
#
# and run there: bash experiments/gpu.sh "$OUT"   (the script installs .whl/*.whl
# into /tmp/site when ml_collections is missing).
set -euo pipefail
OUT="${1:?usage: bash experiments/gpu.sh OUT}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if ! python3 -c "import ml_collections" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
missing=$(python3 - <<'EOF'
import importlib
need = ["jax", "flax", "optax", "orbax.checkpoint", "numpy", "PIL", "ml_collections", "absl"]
print(" ".join(n for n in need if importlib.util.find_spec(n.split(".")[0]) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "error: missing Python packages: $missing (see the preparation at the top of experiments/gpu.sh)" >&2
  exit 1
fi

if [ -f gpu_data/cifar10-jpeg.tar.gz ]; then
  data="folder:$(pwd)/gpu_data/cifar10-jpeg.tar.gz"
elif [ -f ../shared/data/cifar10-jpeg.tar.gz ]; then
  data="folder:$(cd ../shared/data && pwd)/cifar10-jpeg.tar.gz"
else
  echo "error: no CIFAR-10 archive: copy ../shared/data/cifar10-jpeg.tar.gz to gpu_data/" >&2
  exit 1
fi

if [ "${SMOKE:-0}" = 1 ]; then
  bench_preset=smoke; compare_preset=smoke_flops; bench_limit=150; compare_limit=240
  export JAX_PLATFORMS=cpu
else
  bench_preset=gpu_core; compare_preset=gpu_flops; bench_limit=200; compare_limit=340
fi
python3 - <<'EOF' | tee "$OUT/device.txt"
import datetime, jax
print(f"{datetime.date.today()} {jax.devices()[0].device_kind} x{jax.device_count()} "
      f"(jax {jax.__version__})")
EOF

status=0
echo "== benchmarks ($bench_preset, at most ${bench_limit}s)"
timeout "$bench_limit" python3 -m benchmarks.run --config "benchmarks/config.py:$bench_preset" \
  --config.results="$OUT/benchmark" --config.data_source="$data" || status=$?
[ -f "$OUT/benchmark.md" ] && cat "$OUT/benchmark.md"

echo "== equal-FLOPs comparison ($compare_preset, at most ${compare_limit}s)"
timeout "$compare_limit" python3 -m experiments.compare.flops \
  --config "experiments/compare/config.py:$compare_preset" --workdir "$OUT/runs" \
  --config.results_dir="$OUT/compare" --config.base.data.source="$data" \
  --config.base.data.cache_dir="$OUT/cache" > "$OUT/compare.log" 2>&1 || status=$?
grep -v "^epoch \|^  " "$OUT/compare.log" | tail -40
[ -f "$OUT/compare/results.md" ] && cp "$OUT/compare/results.md" "$OUT/compare.md"
# Checkpoints and compiled programs stay behind: only results come back (the
# device tool returns at most 8 files: on 2026-12-04 the sweep's shared
# runs/compilation_cache alone held dozens).
rm -rf "$OUT/runs"/*/seed*/checkpoints "$OUT/runs"/*/seed*/compilation_cache \
  "$OUT/runs/compilation_cache" "$OUT/cache"
exit "$status"
