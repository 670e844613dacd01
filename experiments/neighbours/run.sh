#!/usr/bin/env bash
# The quickstart's encoder at work: export it, embed the CIFAR-10 test split,
# and draw 5 test images with their 8 nearest neighbours (neighbours.png here).
#
#   bash experiments/neighbours/run.sh [WORKDIR]   (default runs/quickstart)
#
# Trains the quickstart first when WORKDIR has no summary.json (about 3 minutes
# on 2 CPU cores). Reads the shared CIFAR-10 archive beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."
workdir="${1:-runs/quickstart}"
here=experiments/neighbours
archive=../shared/data/cifar10-jpeg.tar.gz
if [ ! -f "$workdir/summary.json" ]; then
  python -m ssl_jax.main --config configs/quickstart.py --workdir "$workdir"
fi
python -m ssl_jax.export --workdir "$workdir" --out "$workdir/model.msgpack"
if [ ! -d runs/cifar10/test ]; then
  mkdir -p runs/cifar10 && tar xzf "$archive" -C runs/cifar10 test
fi
python -m ssl_jax.embed --workdir "$workdir" --images folder:runs/cifar10/test \
  --out "$workdir/test.npz"
python -m ssl_jax.neighbors --embeddings "$workdir/test.npz" --out "$here/neighbours.png" \
  --queries 5 --k 8 --cell 48 | tee "$here/neighbours.txt"
