"""Figures: matplotlib with a file backend, optional (plots are skipped without it)."""

from __future__ import annotations

from typing import Sequence


def variants_plot(rows: dict[str, dict], path: str, curves: Sequence[str],
                  highlight: str = "") -> bool:
  """kNN against epochs and against training seconds for `curves`; final kNN of every row."""
  plt = pyplot()
  if plt is None:
    return False
  fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
  for name in curves:
    if name not in rows:
      continue
    r = rows[name]
    epochs = sorted(r["knn_top1_by_epoch"])
    knn = [100 * r["knn_top1_by_epoch"][e].mean for e in epochs]
    width = 2.5 if name == highlight else 1.2
    axes[0].plot(epochs, knn, marker="o", label=name, linewidth=width)
    axes[1].plot([r["seconds_by_epoch"][e].mean for e in epochs], knn, marker="o", label=name,
                 linewidth=width)
  axes[0].set_xlabel("epoch")
  axes[1].set_xlabel("training seconds (evaluation excluded)")
  for ax in axes[:2]:
    ax.set_ylabel("kNN top-1 (%), mean over seeds")
    ax.legend(fontsize=7)
  names = list(rows)
  for i, name in enumerate(names):
    values = [100 * v for v in rows[name]["knn_top1"].values]
    axes[2].bar(i, sum(values) / len(values), color="C0" if name in curves else "C1", alpha=0.6)
    axes[2].scatter([i] * len(values), values, color="k", s=10, zorder=3)
  axes[2].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
  axes[2].set_ylim(min(100 * min(r["knn_top1"].values) for r in rows.values()) - 3, None)
  axes[2].set_ylabel("final kNN top-1 (%): bars mean, dots seeds")
  for ax in axes:
    ax.grid(alpha=0.3)
  save_figure(fig, path)
  return True


def save_figure(fig, path: str) -> None:
  import matplotlib.pyplot as plt
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def pyplot():
  """matplotlib.pyplot with a file backend, or None (plots are then skipped)."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib is not installed: no plot written (pip install 'ssl_jax[plots]')")
    return None
  return plt
