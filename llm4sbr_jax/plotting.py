"""PNG plots of learning curves and experiment tables (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def plot_curves(history: list[dict], path: str, title: str = "", metrics: tuple[str, ...] = ("hr@20", "mrr@20")
                ) -> None:
  """Training loss and per-split metrics per epoch, one panel each."""
  if not history:
    return
  epochs = [h["epoch"] for h in history]
  fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.5 * (1 + len(metrics)), 3.6))
  axes[0].plot(epochs, [h["train"]["loss"] for h in history], marker="o")
  axes[0].set(title="train loss", xlabel="epoch")
  for ax, metric in zip(axes[1:], metrics):
    for split in ("valid", "test"):
      if split in history[0]:
        ax.plot(epochs, [h[split][metric] for h in history], marker="o", label=split)
    ax.set(title=metric.upper() + " (%)", xlabel="epoch")
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_bars(rows: list[tuple[str, dict]], metrics: tuple[str, ...], path: str, title: str = "") -> None:
  """Grouped bars: one group per metric, one bar per labelled row (the paper's Figure 4/5 style)."""
  if not rows:
    return
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6))
  for ax, metric in zip(axes if len(metrics) > 1 else [axes], metrics):
    labels = [label for label, _ in rows]
    values = [m[metric] for _, m in rows]
    bars = ax.bar(range(len(rows)), values, color=[f"C{i}" for i in range(len(rows))])
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(rows)), labels, rotation=15)
    ax.set(title=metric.upper() + " (%)")
    low, high = min(values), max(values)
    ax.set_ylim(max(0.0, low - (high - low) * 1.5 - 0.5), high + (high - low) * 0.5 + 0.5)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_overhead(best: dict[str, dict], memory_key: str, path: str, title: str = "") -> None:
  """Table 3 as bars: step time and peak memory per model; the dashed line is the bare model's peak plus the
  intent arrays (the memory target)."""
  labels = list(best)
  fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.6))
  bars = ax_t.bar(labels, [best[m]["step_ms"] for m in labels], color=["C0", "C1"][:len(labels)])
  ax_t.bar_label(bars, fmt="%.2f", fontsize=8)
  ax_t.set(title="training step (ms)")
  bars = ax_m.bar(labels, [best[m][memory_key] for m in labels], color=["C0", "C1"][:len(labels)])
  ax_m.bar_label(bars, fmt="%.0f", fontsize=8)
  base, intents = best[labels[0]][memory_key], max(r["intent_bytes"] for r in best.values()) / 2**20
  ax_m.axhline(base + intents, color="k", ls="--", lw=1, label=f"{labels[0]} + intent arrays ({intents:.0f} MB)")
  ax_m.set_ylim(0, 1.15 * max(base + intents, *(best[m][memory_key] for m in labels)))
  ax_m.set(title={"peak_device_mb": "peak accelerator memory (MB)"}.get(memory_key, "peak host RSS (MB)"))
  ax_m.legend(fontsize=8, loc="lower right")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_scaling(series: dict[str, list[tuple[float, dict[str, float]]]], panels: dict[str, str], path: str,
                 title: str = "", xlabel: str = "items") -> None:
  """One line per series over a log x axis, one panel per measured key ({key: panel title}); points without the
  key (a run that did not fit) are left out."""
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
  for ax, (key, panel) in zip(axes if len(panels) > 1 else [axes], panels.items()):
    for i, (label, points) in enumerate(series.items()):
      xy = sorted((x, m[key]) for x, m in points if m.get(key) is not None)
      if xy:
        ax.plot(*zip(*xy), marker="o", color=f"C{i}", label=label)
    ax.set(title=panel, xlabel=xlabel, xscale="log", yscale="log")
    ax.grid(True, which="both", lw=0.3)
  (axes[0] if len(panels) > 1 else axes).legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
