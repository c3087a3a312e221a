"""What a fine-tuning run leaves behind: results JSON, a Markdown table, plots, a terminal table.

The four numbers that matter are always in the same order -- simulation (pre-fabrication),
no compensation, end-to-end, NTKD -- so runs, seeds and the paper's Table 4 line up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnlab.runtime import write_json

COLUMNS = (
    ("simulation", "simulation"),
    ("no_compensation", "no compensation"),
    ("end_to_end", "end-to-end"),
    ("ntkd", "NTKD"),
)
#: Paper: Table 4 (fabricated hardware) and, as "simulation", Table 3's NTKD column.
PAPER_TABLE4 = {
    "mnist": {"simulation": 0.973, "no_compensation": 0.892, "end_to_end": 0.932, "ntkd": 0.951},
    "cifar10": {"simulation": 0.756, "no_compensation": 0.473, "end_to_end": 0.704, "ntkd": 0.749},
    "segmentation": {
        "simulation": 0.915,
        "no_compensation": 0.497,
        "end_to_end": 0.627,
        "ntkd": 0.812,
    },
}


def _label(row: dict[str, Any]) -> str:
    return str(row.get("label") or f"fabrication seed {row.get('fabrication_seed')}")


def mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size)}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """mean ± std (sample std) of each column over fabrication seeds."""
    return {key: mean_std([r[key] for r in runs]) for key, _ in COLUMNS}


def markdown_table(rows: list[dict[str, Any]], metric: str, task: str) -> str:
    """One row per fabrication seed, a mean ± std row, and the paper's numbers."""
    head = "| run | " + " | ".join(label for _, label in COLUMNS) + " | NTKD / simulation |"
    lines = [f"Test {metric} on captured images ({task})", "", head]
    lines.append("|" + "---|" * (len(COLUMNS) + 2))
    for r in rows:
        ratio = r["ntkd"] / r["simulation"] if r["simulation"] else float("nan")
        cells = " | ".join(f"{100 * r[k]:.1f}" for k, _ in COLUMNS)
        lines.append(f"| {_label(r)} | {cells} | {100 * ratio:.1f} % |")
    if len(rows) > 1:
        agg = aggregate(rows)
        cells = " | ".join(
            f"{100 * agg[k]['mean']:.1f} ± {100 * agg[k]['std']:.1f}" for k, _ in COLUMNS
        )
        lines.append(f"| mean ± std | {cells} | |")
    paper = PAPER_TABLE4.get(task)
    if paper:
        cells = " | ".join("–" if k not in paper else f"{100 * paper[k]:.1f}" for k, _ in COLUMNS)
        lines.append(f"| paper (Tables 3/4) | {cells} | |")
    return "\n".join(lines) + "\n"


def rich_table(rows: list[dict[str, Any]], metric: str, task: str) -> Any:
    from rich.table import Table

    table = Table(title=f"{task}: test {metric} on captured images")
    table.add_column("run")
    for _, label in COLUMNS:
        table.add_column(label, justify="right")
    for r in rows:
        table.add_row(_label(r), *(f"{100 * r[k]:.1f} %" for k, _ in COLUMNS))
    if len(rows) > 1:
        agg = aggregate(rows)
        table.add_row(
            "mean ± std",
            *(f"{100 * agg[k]['mean']:.1f} ± {100 * agg[k]['std']:.1f}" for k, _ in COLUMNS),
        )
    paper = PAPER_TABLE4.get(task)
    if paper:
        table.add_row(
            "paper (Tables 3/4)",
            *("–" if k not in paper else f"{100 * paper[k]:.1f} %" for k, _ in COLUMNS),
        )
    return table


def plot_results(
    rows: list[dict[str, Any]],
    histories: list[dict[str, Any]],
    path: Path,
    metric: str,
    title: str = "",
) -> Path:
    """Bar chart of the four columns (mean, ± sample std when n > 1) and the fine-tuning curves.

    The metric axis starts at 0 so bar heights compare honestly; n (fabrication seeds) is stated.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    agg = aggregate(rows)
    n = len(rows)
    labels = [label.replace(" ", "\n") for _, label in COLUMNS]
    means = [100 * agg[k]["mean"] for k, _ in COLUMNS]
    stds = [100 * agg[k]["std"] for k, _ in COLUMNS] if n > 1 else [0.0] * len(COLUMNS)
    ax1.bar(
        labels,
        means,
        yerr=stds if n > 1 else None,
        color=["#777", "#c44", "#48c", "#2a2"],
        capsize=4,
    )
    ax1.set_ylim(0, 105)
    ax1.set_ylabel(f"test {metric} (%)")
    spread = "mean ± sample std" if n > 1 else "single run, no error bar"
    ax1.set_title(f"captured test set: n = {n} fabrication seed(s), {spread}", fontsize=9)
    for i, (m, sd) in enumerate(zip(means, stds, strict=True)):
        ax1.text(i, m + sd + 1.0, f"{m:.1f}", ha="center", fontsize=8)
    for hist in histories:
        for method, style in (("end_to_end", "-"), ("ntkd", "--")):
            curve = hist.get(method, [])
            if curve:
                ax2.plot(
                    [e["epoch"] for e in curve],
                    [e.get("task", e.get("loss", np.nan)) for e in curve],
                    style,
                    color="#48c" if method == "end_to_end" else "#2a2",
                    alpha=0.8,
                    label=method.replace("_", "-") if hist is histories[0] else None,
                )
    ax2.set_xlabel("fine-tuning epoch")
    ax2.set_ylabel("task loss on captured train features (nats)")
    ax2.set_yscale("log")
    ax2.set_title(f"fine-tuning curves ({len(histories)} run(s))", fontsize=9)
    ax2.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _title(payload: dict[str, Any]) -> str:
    """Task, bench (simulated or lab) and seeds, from the payload the workflows write."""
    bench = "simulated bench" if payload.get("simulated", True) else "lab bench"
    seeds = payload.get("seeds") or {}
    parts = [f"Post-fabrication compensation — {payload['task']}, {bench}"]
    if "training" in seeds:
        parts.append(f"training seed {seeds['training']}")
    if seeds.get("fabrication"):
        parts.append("fabrication seeds " + ", ".join(str(s) for s in seeds["fabrication"]))
    return ", ".join(parts)


def write_report(
    run_dir: Path,
    payload: dict[str, Any],
    rows: list[dict[str, Any]],
    histories: list[dict[str, Any]],
) -> dict[str, Path]:
    """results.json, results.md, results.png in `run_dir`."""
    metric, task = payload["metric"], payload["task"]
    paths = {
        "json": write_json(run_dir / "results.json", payload),
        "markdown": run_dir / "results.md",
        "plot": run_dir / "results.png",
    }
    paths["markdown"].write_text(markdown_table(rows, metric, task))
    plot_results(rows, histories, paths["plot"], metric, title=_title(payload))
    return paths
