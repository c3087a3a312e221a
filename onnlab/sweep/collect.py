"""One results table per sweep: mean ± std over seeds for every configuration.

``summary.json`` (rows plus failed jobs) and ``summary.csv`` (the same rows, one column per
swept value and per statistic) in the sweep folder.  The std is the sample std (ddof=1), as
papers report over seeds (``onnlab.training.report.summarise``).
"""

from __future__ import annotations

import csv
import shlex
from pathlib import Path
from typing import Any

from onnlab.runtime import write_json
from onnlab.sweep.spec import flatten
from onnlab.training.report import summarise

STATS = ("mean", "std", "n")


def _metric_columns(results: list[dict[str, Any]]) -> list[str]:
    """'test.accuracy', 'val.loss', 'train_time_s', ... present in the finished jobs."""
    cols: list[str] = []
    for r in results:
        for split in ("test", "val"):
            cols += [f"{split}.{k}" for k in r.get(split) or {} if f"{split}.{k}" not in cols]
        cols += [k for k in ("train_time_s", "prepare_time_s") if k in r and k not in cols]
    return cols


def _get(result: dict[str, Any], column: str) -> float | None:
    split, _, key = column.partition(".")
    value = (result.get(split) or {}).get(key) if key else result.get(split)
    return None if value is None else float(value)


def summary_table(
    points: list[dict[str, Any]], results: list[dict[str, Any]], seeds: list[int]
) -> dict[str, Any]:
    """Rows (one per point, in point order) with mean/std/n of every metric over its seeds."""
    done = [r for r in results if "error" not in r]
    failed = [r for r in results if "error" in r]
    columns = _metric_columns(done)
    rows = []
    for i, point in enumerate(points):
        mine = [r for r in done if r["point"] == i]
        row: dict[str, Any] = {"point": i, **flatten(point)}
        row["seeds"] = sorted(r["seed"] for r in mine)
        row["missing_seeds"] = sorted(set(seeds) - set(row["seeds"]))
        for col in columns:
            values = [v for r in mine if (v := _get(r, col)) is not None]
            stats = summarise(values) if values else {"mean": None, "std": None, "n": 0}
            row.update({f"{col}.{s}": stats[s] for s in STATS})
        rows.append(row)
    return {"columns": columns, "rows": rows, "failed": failed}


def write_summary(sweep_dir: Path, header: dict[str, Any], table: dict[str, Any]) -> list[Path]:
    """summary.json and summary.csv in the sweep folder; returns their paths."""
    json_path = write_json(sweep_dir / "summary.json", {**header, **table})
    fields: list[str] = []
    for row in table["rows"]:
        fields += [k for k in row if k not in fields]
    csv_path = sweep_dir / "summary.csv"
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in table["rows"]:
            writer.writerow(
                {k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}
            )
    tmp.replace(csv_path)
    return [json_path, csv_path]


def best_point(table: dict[str, Any], metric: str, split: str) -> int | None:
    """The point with the best mean ``split`` metric (all primary metrics are higher-better)."""
    scored = [r for r in table["rows"] if r.get(f"{split}.{metric}.mean") is not None]
    if not scored:
        return None
    return int(max(scored, key=lambda r: r[f"{split}.{metric}.mean"])["point"])


def format_rows(table: dict[str, Any], metric: str, split: str = "test") -> list[str]:
    """One line per configuration: its swept values and the headline metric on ``split``."""
    lines = []
    best = best_point(table, metric, split)
    for row in table["rows"]:
        params = {k: v for k, v in row.items() if "." in k and not k.startswith(("test.", "val."))}
        params = {k: v for k, v in params.items() if k.split(".")[-1] not in STATS}
        what = " ".join(f"{k}={v}" for k, v in params.items()) or "(base)"
        mean, std = row.get(f"{split}.{metric}.mean"), row.get(f"{split}.{metric}.std")
        score = "no result" if mean is None else f"{100 * mean:.2f} ± {100 * std:.2f} %"
        mark = "  <- best" if row["point"] == best else ""
        lines.append(
            f"point {row['point']}  {what}  {split} {metric} {score}  (n={len(row['seeds'])}){mark}"
        )
    return lines


# TrainConfig fields that `onnlab train` / `onnlab teacher train` take as flags of their own
TRAIN_FLAGS = {
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "device": "--device",
    "label_smoothing": "--label-smoothing",
}
DATA_FLAGS = {"data_root": "--data-root", "limit": "--limit", "eval_limit": "--eval-limit"}


def _flag_text(value: Any) -> str:
    """A value as the CLI parses it back (floats unrounded: the row reruns the trial exactly)."""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def point_command(job: dict[str, Any]) -> tuple[str, list[str]]:
    """(`onnlab train ...` command line that trains one sweep point, settings it cannot carry).

    ``job`` is `onnlab.sweep.spec.resolve`'s dict. Why: the rows of a study are run with the
    values a tuning sweep chose, and copying ten unrounded floats by hand is how a row ends up
    trained with something else. Seeds are left to the caller (`--seeds`, `--seed0`); train
    fields without a flag of their own, and nested architecture values, are returned by name.
    """
    teacher = job["role"] == "teacher"
    words = ["onnlab", "teacher", "train"] if teacher else ["onnlab", "train"]
    words += ["--task", job["task"]]
    if not teacher:
        words += ["--method", job["method"]]
        if job["teacher"]:
            words += ["--teacher", job["teacher"]]
    unexpressed: list[str] = []
    for key, value in job["loss"].items():
        words += ["--loss-opt", f"{key}={_flag_text(value)}"]
    for key, value in job["arch"].items():
        if isinstance(value, dict | list):
            unexpressed.append(f"arch.{key}")
        else:
            words += ["--arch", f"{key}={_flag_text(value)}"]
    for key, value in job["train"].items():
        if key in TRAIN_FLAGS and (key != "label_smoothing" or teacher):
            words += [TRAIN_FLAGS[key], _flag_text(value)]
        else:
            unexpressed.append(f"train.{key}")
    for key, flag in DATA_FLAGS.items():
        if job["data"].get(key) is not None:
            words += [flag, _flag_text(job["data"][key])]
    return shlex.join(words), unexpressed
