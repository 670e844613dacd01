#!/usr/bin/env bash
# The whole GPU benchmark in one command, for a lent GPU machine (jax with CUDA,
# flax, optax, orbax, chex, numpy, Pillow; no internet, no TensorFlow):
#
#   here:    mkdir -p .device && cp ../shared/data/cifar10-jpeg.tar.gz .device/ \
#              && pip download ml-collections --no-deps -d .device
#   there:   bash benchmarks/gpu.sh      (carry: .device; about 6 minutes)
#
# Writes $OUT/gpu.json and $OUT/gpu.md, rewritten after every measurement (a run
# stopped by the time limit keeps what it measured, marked partial); copy them to
# benchmarks/results/.
set -euo pipefail
out="${OUT:-/tmp/ssl_jax_out}"
mkdir -p "$out"
pip install -q --no-deps --no-index .device/ml_collections-*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.txt"
python -m benchmarks.run --config benchmarks/config.py:gpu \
  --config.data_source=folder:.device/cifar10-jpeg.tar.gz --config.results="$out/gpu" \
  2>&1 | tee "$out/gpu.log"
