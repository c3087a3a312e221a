"""`onnlab finetune` on a real bench: trained model + captures made with `onnlab capture`.

The capture stores say which dataset and split they hold (their metadata), so the raw images
the teacher needs are reloaded from the same data root and matched by dataset index.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from onnlab.errors import CaptureError


def _store_meta(path: Path) -> dict[str, Any]:
    from onnlab.capture.store import CaptureStore

    with CaptureStore.read(path, verify=False) as store:
        return dict(store.meta)


def _concat(sets: list[Any]) -> Any:
    import torch

    from onnlab.data.base import ArrayDataset

    if len(sets) == 1:
        return sets[0]
    return ArrayDataset(
        torch.cat([s.images for s in sets]),
        torch.cat([s.targets for s in sets]),
        torch.cat([s.indices for s in sets]),
        teacher_images=torch.cat([s.teacher_images for s in sets]),
        task=sets[0].task,
    )


def run_lab(
    *,
    student: Path,
    teacher: Path,
    calibration: Path | None,
    train_captures: list[Path],
    test_capture: Path,
    data_root: str | Path | None,
    epochs: int | None,
    seed: int,
    experiment: Path | None,
    run_dir: Path | None,
    progress: bool,
    log: Any = print,
) -> dict[str, Any]:
    """Compensate a fabricated system from its capture stores; returns the JSON payload."""
    from onnlab.data import load_dataset
    from onnlab.data.base import ArrayDataset
    from onnlab.finetune.compensate import captured_dataset, compensate
    from onnlab.finetune.config import load_experiment, train_config
    from onnlab.finetune.models import _load
    from onnlab.finetune.report import aggregate, write_report
    from onnlab.runtime import make_run_dir
    from onnlab.training.metrics import evaluate, primary_metric

    started = time.perf_counter()
    metas = {p: _store_meta(p) for p in [*train_captures, test_capture]}
    tasks = {m.get("dataset") for m in metas.values()}
    if len(tasks) != 1:
        raise CaptureError(
            f"capture stores come from different datasets: {sorted(map(str, tasks))}"
        )
    task = tasks.pop()
    calib_ids = {m.get("calibration_id") for m in metas.values()}
    if len(calib_ids) != 1:
        raise CaptureError("capture stores were made with different calibrations")
    if calibration is not None:
        from onnlab.capture.calibrated import calibration_id

        if calib_ids != {calibration_id(calibration)}:
            raise CaptureError(f"capture stores were not made with the calibration {calibration}")
    model, _ = _load(Path(student), task, "student")
    teach, _ = _load(Path(teacher), task, "teacher")
    cfg = load_experiment(task, experiment)
    run_dir = Path(run_dir) if run_dir is not None else make_run_dir(f"finetune-{task}")
    run_dir.mkdir(parents=True, exist_ok=True)

    def split_data(meta: dict[str, Any]) -> Any:
        return load_dataset(
            task, meta["split"], data_root or meta.get("data_root"), seed=meta.get("seed", 0)
        )

    train_set = _concat(
        [
            captured_dataset(p, split_data(metas[p]), model.frontend, task=task)
            for p in train_captures
        ]
    )
    raw_test = split_data(metas[test_capture])
    test_set = captured_dataset(test_capture, raw_test, model.frontend, task=task)
    metric = primary_metric(task)
    # the designed model on the very images that were captured: the pre-fabrication number
    raw_view = ArrayDataset(test_set.teacher_images, test_set.targets, test_set.indices, task=task)
    simulation = evaluate(model, raw_view, task)[metric]
    overrides = dict(cfg.finetune.train)
    if epochs is not None:
        overrides["epochs"] = epochs
    config = train_config(task, "student", overrides, str(cfg.source), seed=seed)
    results = compensate(
        model,
        teach,
        train_set,
        test_set,
        task=task,
        train_config=config.model_copy(update={"progress": progress}),
        ntkd_options=cfg.finetune.ntkd,
        val_fraction=cfg.finetune.val_fraction,
        run_dir=run_dir / "finetune",
    )
    row = {"label": "fabricated bench", "simulation": simulation}
    row.update({m: results[m][metric] for m in ("no_compensation", "end_to_end", "ntkd")})
    agg = aggregate([row])
    payload = {
        "task": task,
        "simulated": any(bool(m.get("simulated")) for m in metas.values()),
        "metric": metric,
        **{k: agg[k]["mean"] for k in ("simulation", "no_compensation", "end_to_end", "ntkd")},
        "seconds": time.perf_counter() - started,
        "ntkd_recovery": row["ntkd"] / row["simulation"],
        "runs": [row],
        "captures": {"train": [str(p) for p in train_captures], "test": str(test_capture)},
        "n_captured_train": len(train_set),
        "n_captured_test": len(test_set),
        "optics_sha256": results["optics_sha256"],
        "run_dir": str(run_dir),
    }
    histories = [{m: results[m].get("history", []) for m in ("end_to_end", "ntkd")}]
    paths = write_report(run_dir, payload, [row], histories)
    payload["paths"] = {k: str(v) for k, v in paths.items()}
    log(f"results in {run_dir}")
    return payload
