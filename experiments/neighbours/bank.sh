#!/usr/bin/env bash
# The quickstart's memory bank as a product: export it (an embedding of every
# training image, as training left it), then draw 5 training images with their
# 8 nearest bank neighbours and list the most similar pairs (near-duplicates),
# all without a pass of the network over the training set
# (bank_neighbours.png, bank_duplicates.png and bank_neighbours.txt here).
#
#   bash experiments/neighbours/bank.sh [WORKDIR] [THRESHOLD]   (default runs/quickstart, 0.88)
#
# Trains the quickstart first when WORKDIR has no summary.json (about 3 minutes
# on 2 CPU cores). Reads the shared CIFAR-10 archive beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."
workdir="${1:-runs/quickstart}"
threshold="${2:-0.88}"
here=experiments/neighbours
if [ ! -f "$workdir/summary.json" ]; then
  python -m ssl_jax.main --config configs/quickstart.py --workdir "$workdir"
fi
python -m ssl_jax.export --workdir "$workdir" --bank "$workdir/bank.npz" | tee "$here/bank_neighbours.txt"
python -m ssl_jax.neighbors --embeddings "$workdir/bank.npz" --out "$here/bank_neighbours.png" \
  --queries 5 --k 8 --cell 48 --duplicates "$threshold" | tee -a "$here/bank_neighbours.txt"
# The first image of the most similar pairs (4 different ones), with its nearest rows.
queries=$(grep -E '^  [01]\.[0-9]+  ' "$here/bank_neighbours.txt" | awk '!seen[$2]++ {print "--query=" $2}' | head -4)
python -m ssl_jax.neighbors --embeddings "$workdir/bank.npz" --out "$here/bank_duplicates.png" \
  $queries --k 6 --cell 48 > /dev/null
