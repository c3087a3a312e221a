"""CLI: `onnlab estimate` — accuracy a frontend design can reach, before fabrication.

The physical constraints (aperture, kernel size, spacing) fix how many kernels fit (Eq. 1);
kernel regression with the network's NTK predicts the test accuracy of that many random PSFs +
the readout, and of infinitely many. `--sweep` repeats the estimate over smaller and larger
apertures so that the designer sees where more kernels stop paying.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import typer

from onnlab.commands.options import (
    Task,
    check_data,
    data_root_option,
    json_option,
    out_option,
    seed0_option,
    task_option,
)

# Images per split when not given: every pixel is a sample in segmentation, so fewer images.
SPLIT_SIZES = {"classification": (1000, 500, 1000), "segmentation": (100, 20, 50)}
SWEEP_POINTS = 9
SWEEP_MAX_SCALE = 4.0


def sweep_scales(aperture_mm: tuple[float, float], kernel_mm: float) -> list[float]:
    """Aperture scale factors from 'one kernel on the short side' to 4x, geometric, plus 1."""
    low = kernel_mm / min(aperture_mm)
    ratio = (SWEEP_MAX_SCALE / low) ** (1 / (SWEEP_POINTS - 1))
    return sorted({*(low * ratio**i for i in range(SWEEP_POINTS)), 1.0})


def _check_lengths(aperture_mm: tuple[float, float], kernel_mm: float, spacing_mm: float) -> None:
    """One-line errors that name the CLI option (the library names the SI parameter)."""
    from onnlab.errors import UsageError

    lengths = {
        "--aperture-mm height": aperture_mm[0],
        "--aperture-mm width": aperture_mm[1],
        "--kernel-mm": kernel_mm,
    }
    for label, value in lengths.items():
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{label} must be a positive length in mm, got {value:g}")
    if not (math.isfinite(spacing_mm) and spacing_mm >= 0):
        raise UsageError(f"--spacing-mm must be a non-negative length in mm, got {spacing_mm:g}")
    if kernel_mm > min(aperture_mm):
        raise UsageError(
            f"--kernel-mm {kernel_mm:g} is larger than the aperture --aperture-mm "
            f"{aperture_mm[0]:g} x {aperture_mm[1]:g}: no kernel fits"
        )


def _splits(task: str, data_root: Path | None, seed: int, n_train: int, n_val: int, n_test: int):
    from onnlab.data import load_dataset
    from onnlab.estimate.estimator import Split

    out = []
    for split, limit in (("train", n_train), ("val", n_val), ("test", n_test)):
        ds = load_dataset(task, split, data_root, seed=seed, limit=limit)
        out.append(Split(ds.images, ds.targets))
    return out


def _trained_student(task: str, make, aperture_mm, psfs, data_root, seed: int):
    """Learning-curve estimate of the student `onnlab train` builds for this layout.

    The task's student backend (hidden layers), the same K PSFs, its flips if the task's student
    trains with them, read at the size of the whole training split.
    """
    from onnlab.bench.estimate_trained import student_kernel
    from onnlab.data.datasets import split_size
    from onnlab.estimate.estimator import Estimator
    from onnlab.estimate.learning_curve import CURVE_SIZES, trained_hybrid_estimate

    hidden, flips = student_kernel(task)
    design = make(aperture_mm, hidden)
    train, val, test = _splits(task, data_root, seed, *CURVE_SIZES[task])
    est = Estimator(design.architecture, train, val, test, seed=seed)
    n_full = split_size(task, "train", data_root, seed)
    pred = trained_hybrid_estimate(est, psfs, n_full, flips=flips)
    pred.details["hidden"] = hidden
    return pred


def _stderr(p) -> float | None:
    """Binomial standard error of a test accuracy in points (None for mIoU)."""
    if p.metric != "accuracy":
        return None
    return 100 * math.sqrt(max(p.score * (1 - p.score), 0.0) / max(p.n_test, 1))


def _sweep(est, make, aperture_mm: tuple[float, float], kernel_mm: float, seed: int) -> list:
    """Estimate for apertures scaled from one kernel to 4x, one row per distinct kernel count."""
    import torch

    rows: list[dict] = []
    for s in sweep_scales(aperture_mm, kernel_mm):
        ap = (aperture_mm[0] * s, aperture_mm[1] * s)
        d = make(ap)
        if any(r["n_kernels"] == d.n_kernels for r in rows):
            continue
        a = d.architecture
        gen = torch.Generator().manual_seed(seed)
        p = est.predict_psfs(est.prior.sample(d.n_kernels, a.in_channels, a.kernel_px, gen))
        rows.append(
            {
                "aperture_mm": [round(ap[0], 4), round(ap[1], 4)],
                "rows": d.layout.rows,
                "cols": d.layout.cols,
                "n_kernels": d.n_kernels,
                "predicted": 100 * p.score,
                "stderr": _stderr(p),
                "time_s": p.time_s,
            }
        )
    return rows


def register(app: typer.Typer) -> None:
    """Add `onnlab estimate` to the root app."""

    @app.command("estimate")
    def estimate(
        aperture_mm: tuple[float, float] = typer.Option(
            ..., metavar="H W", help="Aperture height and width (mm)."
        ),
        kernel_mm: float = typer.Option(
            ..., metavar="MM", help="Side of one kernel's sub-aperture (mm)."
        ),
        spacing_mm: float = typer.Option(
            ..., metavar="MM", help="Minimum edge spacing between kernels (mm)."
        ),
        task: Task = task_option(Task.mnist),
        kernel_px: int | None = typer.Option(
            None, min=1, metavar="INT", help="PSF side in sensor pixels (default: the task's)."
        ),
        pool: int | None = typer.Option(
            None,
            min=1,
            metavar="INT",
            help="Sensor binning before the readout (default: the task's).",
        ),
        hidden: list[int] = typer.Option(
            [],
            metavar="INT",
            help="Hidden width (repeatable); default: one FC layer, segmentation a 1x1 MLP of 64.",
        ),
        wavelength_nm: list[float] = typer.Option(
            [], metavar="NM", help="Wavelength of one colour channel in nm (repeatable)."
        ),
        sensor_pitch_um: float = typer.Option(3.45, metavar="UM", help="Sensor pixel pitch (um)."),
        n_train: int | None = typer.Option(
            None, metavar="INT", help="Training images (default: 1000; segmentation 100)."
        ),
        n_val: int | None = typer.Option(
            None,
            metavar="INT",
            help="Validation images for the ridge choice (default: 500; segmentation 20).",
        ),
        n_test: int | None = typer.Option(
            None,
            metavar="INT",
            help="Test images for the reported score (default: 1000; segmentation 50).",
        ),
        data_root: Path | None = data_root_option(),
        seed0: int = seed0_option("Seed of the data split and the random PSFs."),
        sweep: bool = typer.Option(False, help="Also sweep the aperture size; writes a PNG."),
        as_json: bool = json_option(),
        out: Path | None = out_option(),
    ) -> None:
        """Predict the accuracy of a frontend design (and of infinitely many kernels)."""
        seed = seed0
        task = task.value  # type: ignore[assignment]
        _check_lengths(aperture_mm, kernel_mm, spacing_mm)
        defaults = SPLIT_SIZES["segmentation" if task == "segmentation" else "classification"]
        n_train = defaults[0] if n_train is None else n_train
        n_val = defaults[1] if n_val is None else n_val
        n_test = defaults[2] if n_test is None else n_test
        from onnlab.errors import UsageError

        for name, value in (("--n-train", n_train), ("--n-val", n_val), ("--n-test", n_test)):
            if value < 1:
                raise UsageError(f"{name} must be >= 1, got {value}")
        import torch

        from onnlab.estimate.design import design_network
        from onnlab.estimate.estimator import Estimator
        from onnlab.runtime import run_dir_at, write_json

        start = time.perf_counter()
        say = (lambda msg: None) if as_json else typer.echo

        def make(aperture: tuple[float, float], backend: tuple[int, ...] | None = None):
            return design_network(
                task,
                (aperture[0] * 1e-3, aperture[1] * 1e-3),
                kernel_mm * 1e-3,
                spacing_mm * 1e-3,
                kernel_px=kernel_px,
                pool=pool,
                hidden=backend if backend is not None else (tuple(hidden) or None),
                wavelengths_m=tuple(w * 1e-9 for w in wavelength_nm) or None,
                sensor_pitch_m=sensor_pitch_um * 1e-6,
            )

        check_data(task, data_root)
        try:  # the design rules check the options (wavelength per channel, pool, sizes)
            design = make(aperture_mm)
        except ValueError as exc:
            raise UsageError(f"design options: {exc}") from exc
        for line in design.describe():
            say(line)
        train, val, test = _splits(task, data_root, seed, n_train, n_val, n_test)
        est = Estimator(design.architecture, train, val, test, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        arch = design.architecture
        psfs = est.prior.sample(design.n_kernels, arch.in_channels, arch.kernel_px, gen)
        this = est.predict_psfs(psfs)
        inf = est.predict_infinite()
        metric = this.metric
        say(f"predicted test {metric} (n_train={len(train.images)}, {len(test.images)} test):")
        say(
            f"  this design, {design.n_kernels} random PSFs: {100 * this.score:.2f} % "
            f"({this.time_s:.1f} s)"
        )
        say(f"  infinitely many kernels (NTK limit): {100 * inf.score:.2f} % ({inf.time_s:.1f} s)")
        if _stderr(this) is not None:
            say(f"  (test standard error {_stderr(this):.1f} points)")
        student = None
        if arch.kind == "classification":
            student = _trained_student(task, make, aperture_mm, psfs, data_root, seed)
            say(
                f"  the trained student (backend {list(student.details['hidden'])}, trainable "
                f"PSFs, {student.n_full} training images; power law from n <= "
                f"{student.points[-1]['n']}): {100 * student.predicted:.2f} % "
                f"({student.time_s:.1f} s)"
            )
        run_dir = run_dir_at(out, "estimate")
        summary: dict = {
            "design": design.as_dict(),
            "aperture_mm": list(aperture_mm),
            "kernel_mm": kernel_mm,
            "spacing_mm": spacing_mm,
            "metric": metric,
            "n_train": len(train.images),
            "n_val": len(val.images),
            "n_test": len(test.images),
            "predicted": 100 * this.score,
            "predicted_infinite": 100 * inf.score,
            "estimate": this.as_dict(),
            "estimate_infinite": inf.as_dict(),
        }
        if student is not None:
            summary["predicted_trained_student"] = 100 * student.predicted
            summary["estimate_trained_student"] = student.as_dict()
        if sweep:
            rows = _sweep(est, make, aperture_mm, kernel_mm, seed)
            say(f"{'aperture (mm)':>16} {'layout':>9} {'K':>6} {metric + ' %':>11} {'time s':>7}")
            for r in rows:
                ap_txt = f"{r['aperture_mm'][0]:.3g} x {r['aperture_mm'][1]:.3g}"
                say(
                    f"{ap_txt:>16} {str(r['rows']) + 'x' + str(r['cols']):>9} {r['n_kernels']:>6} "
                    f"{r['predicted']:>11.2f} {r['time_s']:>7.1f}"
                )
            say(f"{'':>16} {'':>9} {'inf':>6} {100 * inf.score:>11.2f} {inf.time_s:>7.1f}")
            if rows and rows[0]["stderr"] is not None:
                say(
                    f"(test standard error ~ {rows[-1]['stderr']:.1f} points; differences below "
                    "that are noise)"
                )
            png = run_dir / "sweep.png"
            from onnlab.estimate.plots import plot_sweep

            plot_sweep(
                rows,
                100 * inf.score,
                metric,
                png,
                task=task,
                seed=seed,
                n_train=len(train.images),
                n_test=len(test.images),
            )
            summary["sweep"] = rows
            summary["sweep_png"] = str(png)
        summary["total_time_s"] = time.perf_counter() - start
        summary["run_dir"] = str(run_dir)
        write_json(run_dir / "estimate.json", summary)
        say(f"time: {summary['total_time_s']:.1f} s; results in {run_dir}")
        if as_json:
            from onnlab.runtime import to_jsonable

            typer.echo(json.dumps(to_jsonable(summary)))
