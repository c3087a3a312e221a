"""Training-curve plot and seed summaries for run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

METRIC_NAMES = {"miou": "mIoU", "accuracy": "accuracy"}


def plot_curves(history: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Train/val loss and the validation metric (in %) per epoch, as a PNG (matplotlib Agg).

    Fractions (accuracy, mIoU) are plotted in percent, the one unit every report uses.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = history.get("epochs", [])
    metric = history.get("metric", "accuracy")
    path = Path(path)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(9, 3.6))
    if epochs:
        e = [r["epoch"] for r in epochs]
        ax_loss.plot(e, [r["train"]["loss"] for r in epochs], "o-", label="train (objective)")
        ax_loss.plot(e, [r["val"]["loss"] for r in epochs], "s-", label="val (task loss)")
        ax_metric.plot(e, [100 * r["val"][metric] for r in epochs], "o-", color="C2")
        best = history.get("best_epoch")
        if best is not None:
            ax_metric.axvline(best, color="0.5", ls=":", lw=1, label=f"kept: epoch {best}")
            ax_metric.legend(fontsize=8)
    ax_metric.set_ylabel(f"validation {METRIC_NAMES.get(metric, metric)} (%)")
    ax_loss.set_xlabel("epoch")
    task_loss = "BCE + soft Dice" if metric == "miou" else "cross-entropy, nats"
    ax_loss.set_ylabel(f"loss ({task_loss}; train adds KD/NTKD terms)", fontsize=9)
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.legend(fontsize=8)
    ax_metric.set_xlabel("epoch")
    ax_metric.grid(alpha=0.3)
    ax_loss.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def summarise(values: list[float]) -> dict[str, float]:
    """mean, sample std (ddof=1, as papers report over seeds), min, max, n."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {
        "mean": float(arr.mean()),
        "std": std,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": len(arr),
    }
