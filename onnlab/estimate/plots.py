"""Figures of the pre-fabrication estimate (``onnlab estimate --sweep``).

Why here and not in the command: the estimate's figures are part of what the estimate reports,
so they live beside it (layer 2, matplotlib only) and any workflow can draw them from the rows
that ``estimate.json`` stores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_sweep(
    rows: list[dict[str, Any]],
    infinite: float,
    metric: str,
    path: str | Path,
    *,
    task: str = "",
    seed: int | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
) -> Path:
    """Predicted test metric (%) against kernel count and aperture area, K → ∞ as a line.

    Error bars are the binomial standard error of the test accuracy (points, n_test images);
    mIoU rows carry none, and the title says so.  A line plot, so the y-axis fits the data
    (differences of a few points are the point of a sweep); bar charts start at 0.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["n_kernels"] for r in rows]
    scores = [r["predicted"] for r in rows]
    errs = [r.get("stderr") or 0.0 for r in rows]
    has_err = any(r.get("stderr") for r in rows)
    areas = [r["aperture_mm"][0] * r["aperture_mm"][1] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, xs, label in (
        (axes[0], ks, "number of kernels K (Eq. 1 layout)"),
        (axes[1], areas, "aperture area (mm²)"),
    ):
        ax.errorbar(
            xs,
            scores,
            yerr=errs if has_err else None,
            fmt="o-",
            capsize=3,
            label="K random PSFs + readout",
        )
        ax.axhline(infinite, ls="--", color="k", label=f"K → ∞ (NTK): {infinite:.1f} %")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"predicted test {metric} (%)")
        ax.grid(alpha=0.3)
    for r in rows:
        axes[0].annotate(
            f"{r['rows']}×{r['cols']}",
            (r["n_kernels"], r["predicted"]),
            xytext=(0, -14),
            textcoords="offset points",
            ha="center",
            fontsize=7,
        )
    axes[0].legend(loc="lower right", fontsize=8)
    what = [task] if task else []
    if seed is not None:
        what.append(f"seed {seed}")
    if n_train is not None:
        what.append(f"n_train {n_train}")
    if n_test is not None:
        what.append(f"n_test {n_test}")
    bars = "bars: binomial standard error on n_test" if has_err else "no error bars (mIoU)"
    fig.suptitle(
        "Pre-fabrication estimate: predicted accuracy vs frontend size (kernel regression with "
        f"the NTK, no bench)\n{', '.join(what)}; {bars}; labels: kernel grid rows×cols",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
