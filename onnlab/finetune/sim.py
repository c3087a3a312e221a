"""`onnlab finetune --sim`: the whole post-fabrication loop on a simulated fabricated bench.

design (train teacher + student in simulation) -> "fabricate" (a `SimulatedBench` with seeded
as-built errors the training code never sees: PSF error delta, gain alpha, misalignment beta,
noise; plus display gamma, sensor registration and focus) -> calibrate it with the calibration
package -> capture 10 % of the training split and the test split through the SLM/camera drivers
into `CaptureStore`s -> fine-tune the backend (none / end-to-end / NTKD) -> report.

Everything the bench does goes through the same code a lab uses (`onnlab.capture.session`,
`calibration`), so the demo exercises the real workflow, not a shortcut.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from onnlab.finetune.config import ExperimentConfig, load_experiment, train_config


@dataclass
class SimOptions:
    """Command-line knobs of the demo (None = the experiment config's value)."""

    task: str = "mnist"
    experiment: str | Path | None = None
    epochs: int | None = None
    seed: int = 0
    fabrication_seed: int = 0
    n_fabrications: int = 1
    data_root: str | Path | None = None
    tiny: bool = False
    student: str | Path | None = None
    teacher: str | Path | None = None
    run_dir: str | Path | None = None
    progress: bool = True
    log: Any = field(default=print)


def load_data(cfg: ExperimentConfig, data_root: str | None, seed: int) -> dict[str, Any]:
    from onnlab.data import load_dataset

    limit, test_limit = cfg.data.train_limit, cfg.data.test_limit
    val_limit = None if limit is None else max(50, limit // 9)
    return {
        "train": load_dataset(cfg.task, "train", data_root, seed=seed, limit=limit),
        "val": load_dataset(cfg.task, "val", data_root, seed=seed, limit=val_limit),
        "test": load_dataset(cfg.task, "test", data_root, seed=seed, limit=test_limit),
    }


def tile_layout(n_kernels: int, bench_options: dict[str, Any]) -> dict[str, int]:
    """The designed tile grid on the sensor (design knowledge shared by bench and calibration)."""
    from drivers.sim.design import tile_grid

    rows, cols = tile_grid(n_kernels, bench_options.get("rows"), bench_options.get("cols"))
    return {"rows": rows, "cols": cols, "gap_px": int(bench_options.get("gap_px", 4))}


@dataclass(frozen=True)
class DesignedOptic:
    """The optic sent to the fab, as the lab knows it: design phases and their PSFs.

    A phase frontend's phases are the design; a free frontend's PSFs are first realised
    (`onnlab.design.realise`), and the lab then knows the *realised* PSFs (what the exported
    design.h5 records), not the free ones no optic can make. Calibration compares the bench
    with these PSFs.
    """

    phases: torch.Tensor  # (K, N, N) radians at the design wavelength
    optics: Any  # onnlab.optics.OpticsConfig
    material: Any
    psfs: torch.Tensor  # (K, C, k, k) design PSFs at nominal focus (float32, CPU)


def designed_optic(model: Any, cfg: ExperimentConfig) -> DesignedOptic:
    """The design phases of ``model``'s frontend (realised once when the frontend is free)."""
    fe = model.frontend
    if hasattr(fe, "design_phases"):
        return DesignedOptic(
            fe.design_phases().detach().cpu(),
            fe.optics,
            fe.material,
            fe.psfs().detach().to(torch.float32).cpu(),
        )
    from onnlab.design.realise import realise
    from onnlab.models.zoo import student_system

    system = student_system(cfg.task, **cfg.student.architecture)
    res = realise(
        fe.psfs().detach().to(torch.float32).cpu(),
        system.optics,
        n_phase=system.phase_samples,
        material=system.material,
        oversample=system.oversample,
    )
    return DesignedOptic(
        res.phases, system.optics, system.material, res.psfs.detach().to(torch.float32).cpu()
    )


def fabricate(
    model: Any,
    cfg: ExperimentConfig,
    fabrication_seed: int,
    designed: DesignedOptic | None = None,
) -> tuple[Any, dict, torch.Tensor]:
    """A simulated bench of the trained design with seeded, hidden as-built errors.

    Returns (bench, tile layout, design PSFs the lab calibrates against). On the physical
    bench the as-built optic is ``designed`` (computed here when None) made with
    ``fabrication.physical`` height-domain errors.
    """
    from drivers.sim import SimulatedBench
    from onnlab.models.zoo import task_spec
    from onnlab.optics import FabricationErrors, SensorModel

    fab = cfg.fabrication
    psfs = model.frontend.psfs().detach().to(torch.float32).cpu()
    k, c, kp, _ = psfs.shape
    errors = FabricationErrors.sample(
        k,
        c,
        kp,
        seed=fabrication_seed,
        strength=fab.strength,
        gain_std=fab.gain_std,
        shift_std_px=fab.shift_std_px,
        rotation_std_rad=fab.rotation_std_rad,
        delta_std=fab.delta_std,
    )
    layout = tile_layout(k, fab.bench)
    extra = {key: v for key, v in fab.bench.items() if key not in layout}
    design = psfs
    if fab.model == "physical":
        designed = designed or designed_optic(model, cfg)
        extra["optic"] = physical_optic(designed, cfg, fabrication_seed)
        design = designed.psfs
    bench = SimulatedBench(
        psfs,
        task_spec(cfg.task).image_hw,
        errors=errors,
        sensor=SensorModel(**fab.sensor),
        seed=fabrication_seed,
        error_strength=fab.bench_error_strength,
        **layout,
        **extra,
    )
    return bench, layout, design


def physical_optic(designed: DesignedOptic, cfg: ExperimentConfig, seed: int) -> Any:
    """The as-built optic of a physical bench: the design phases fabricated with
    ``fabrication.physical`` errors drawn from ``seed``."""
    from drivers.sim.bench import NOMINAL_FOCUS_M
    from drivers.sim.physical import build_optic
    from onnlab.optics.fabrication import FabricationErrors as HeightErrors

    errors = HeightErrors(**{"strength": cfg.fabrication.strength, **cfg.fabrication.physical})
    return build_optic(
        designed.phases,
        designed.optics,
        designed.material,
        seed,
        errors,
        nominal_focus_m=NOMINAL_FOCUS_M,
    )


def run_one_fabrication(
    cfg: ExperimentConfig,
    opts: SimOptions,
    data: dict[str, Any],
    student: Any,
    teacher: Any,
    run_dir: Path,
    fabrication_seed: int,
    designed: DesignedOptic | None = None,
) -> dict[str, Any]:
    """Fabricate, calibrate, capture train fraction + test set, compensate: one table row."""
    from onnlab.capture.calibrated import calibrate_sim_bench, load_extractor
    from onnlab.capture.runner import ExposurePolicy, select_indices
    from onnlab.capture.session import bench_config_sha256, capture_dataset
    from onnlab.errors import CalibrationError
    from onnlab.finetune.compensate import captured_dataset, compensate
    from onnlab.optics import SensorModel

    fab_dir = run_dir / f"fabrication-{fabrication_seed}"
    fab_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    bench, layout, design = fabricate(student, cfg, fabrication_seed, designed)
    opts.log(
        f"fabricated a SIMULATED bench of the trained design: {layout['rows']}x{layout['cols']} "
        f"tiles, hidden fabrication errors from seed {fabrication_seed}"
    )
    bench_hash = bench_config_sha256(
        {"sim_seed": fabrication_seed, "fabrication": cfg.fabrication.model_dump()}
    )
    artifact = fab_dir / "calibration.h5"
    extractor = None
    if artifact.is_file():  # same design, same fabrication: its stores stay valid
        try:
            extractor = load_extractor(artifact, bench_config=bench_hash, design=design)
            opts.log(f"reusing the calibration of an earlier run: {artifact}")
        except CalibrationError as exc:
            opts.log(f"cached calibration not reusable ({exc}); recalibrating")
            for stale in fab_dir.glob("capture-*.h5"):
                stale.unlink()  # made with the old calibration: derived data, now invalid
    if extractor is None:
        extractor = calibrate_sim_bench(
            bench,
            design,
            artifact,
            **layout,
            quick=cfg.calibration.quick,
            options=cfg.calibration.options,
            bench_config_hash=bench_hash,
            electrons_per_unit=SensorModel(**cfg.fabrication.sensor).full_scale_e,
            progress=opts.progress,
        )
    timings["calibrate_s"] = time.perf_counter() - t0
    info = extractor.summary()
    opts.log(
        f"calibrated in {timings['calibrate_s']:.0f} s: registration rms "
        f"{info.get('registration_rms_px', float('nan')):.3f} px, "
        f"gamma {info.get('gamma', 0):.2f}, "
        f"alpha {[round(a, 2) for a in info.get('alpha', [])]}, "
        f"unexplained {100 * (info.get('unexplained_fraction') or 0.0):.2f} % of the signal"
    )
    extractor.prepare(bench.camera)
    meta = {
        "calibration_id": extractor.calibration_id,
        "model_id": extractor.design_id,
        "bench_config_sha256": bench_hash,
        "fabrication_seed": fabrication_seed,
    }
    t0 = time.perf_counter()
    stores = {}
    for split, requested in (
        ("train", select_indices(data["train"].indices.numpy(), cfg.capture.fraction, opts.seed)),
        ("test", data["test"].indices.numpy()),
    ):
        stores[split] = fab_dir / f"capture-{split}.h5"
        summary = capture_dataset(
            stores[split],
            data[split],
            requested,
            bench.slm,
            bench.camera,
            meta={
                **meta,
                "dataset": cfg.task,
                "simulated": True,
                "split": split,
                "seed": opts.seed,
                "data_root": opts.data_root,
            },
            to_features=extractor.features,
            feature_shape=extractor.feature_shape,
            pattern_fn=extractor.pattern,
            chunk_size=cfg.capture.chunk_size,
            exposure=ExposurePolicy(),
            progress=opts.progress,
            description=f"capture {split}",
        )
        opts.log(
            f"captured {split}: {summary.captured} new, {summary.skipped} already present "
            f"({summary.frames_per_s:.0f} frames/s) -> {stores[split]}"
        )
    timings["capture_s"] = time.perf_counter() - t0
    bench.close()
    train_set = captured_dataset(stores["train"], data["train"], student.frontend, task=cfg.task)
    test_set = captured_dataset(stores["test"], data["test"], student.frontend, task=cfg.task)
    overrides = dict(cfg.finetune.train)
    if opts.epochs is not None:
        overrides["epochs"] = opts.epochs
    ft_config = train_config(cfg.task, "student", overrides, str(cfg.source), seed=opts.seed)
    ft_config = ft_config.model_copy(update={"progress": opts.progress})
    t0 = time.perf_counter()
    results = compensate(
        student,
        teacher,
        train_set,
        test_set,
        task=cfg.task,
        train_config=ft_config,
        ntkd_options=cfg.finetune.ntkd,
        val_fraction=cfg.finetune.val_fraction,
        run_dir=fab_dir / "finetune",
    )
    timings["finetune_s"] = time.perf_counter() - t0
    return {
        "results": results,
        "timings": timings,
        "n_captured_train": len(train_set),
        "n_captured_test": len(test_set),
        "stores": {k: str(v) for k, v in stores.items()},
        "calibration": str(fab_dir / "calibration.h5"),
        "calibration_summary": extractor.summary(),
        "truth": bench.truth.errors.to_dict() | {"psf_delta": "hidden (see bench seed)"},
    }


def run_sim(opts: SimOptions) -> dict[str, Any]:
    """The whole demo; returns the JSON payload (also written to the run dir)."""
    from onnlab.errors import UsageError
    from onnlab.finetune.models import get_student, get_teacher
    from onnlab.finetune.report import aggregate, write_report
    from onnlab.runtime import make_run_dir, seed_everything
    from onnlab.training.metrics import evaluate, primary_metric

    started, cpu_started = time.perf_counter(), time.process_time()
    if opts.n_fabrications < 1:
        raise UsageError(f"--seeds (fabrications) must be >= 1, got {opts.n_fabrications}")
    if opts.epochs is not None and opts.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {opts.epochs}")
    cfg = load_experiment(opts.task, opts.experiment, tiny=opts.tiny)
    if opts.run_dir is not None:
        run_dir = Path(opts.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = make_run_dir(f"finetune-sim-{cfg.task}")
    opts.log(f"run dir: {run_dir}")
    seed_everything(opts.seed)
    data = load_data(cfg, opts.data_root, opts.seed)
    teacher, teacher_info = get_teacher(
        cfg, data, run_dir, checkpoint=opts.teacher, seed=opts.seed, progress=opts.progress
    )
    student, student_info = get_student(
        cfg, data, teacher, run_dir, checkpoint=opts.student, seed=opts.seed, progress=opts.progress
    )
    metric = primary_metric(cfg.task)
    teacher_test = evaluate(teacher, data["test"], cfg.task)[metric]
    simulation = evaluate(student, data["test"], cfg.task)[metric]
    opts.log(
        f"teacher {metric} {teacher_test:.4f}; student ({student_info.get('method')}) "
        f"simulation {metric} {simulation:.4f}"
    )
    designed = None
    if cfg.fabrication.model == "physical":  # realised once, fabricated per seed
        t0 = time.perf_counter()
        designed = designed_optic(student, cfg)
        opts.log(f"design phases for the fab ready in {time.perf_counter() - t0:.1f} s")
    rows, histories, details = [], [], []
    for k in range(opts.n_fabrications):
        fab_seed = opts.fabrication_seed + k
        one = run_one_fabrication(cfg, opts, data, student, teacher, run_dir, fab_seed, designed)
        res = one["results"]
        row = {"fabrication_seed": fab_seed, "simulation": simulation}
        row.update({m: res[m][metric] for m in ("no_compensation", "end_to_end", "ntkd")})
        row["ntkd_recovery"] = row["ntkd"] / simulation if simulation > 0 else float("nan")
        cal = one["calibration_summary"]
        row["calibration"] = {
            "registration_rms_px": cal.get("registration_rms_px"),
            "psf_residual": cal.get("residuals", {}).get("psf"),
            "unexplained_fraction": cal.get("unexplained_fraction"),
        }
        rows.append(row)
        histories.append({m: res[m].get("history", []) for m in ("end_to_end", "ntkd")})
        details.append(one)
    agg = aggregate(rows)
    payload: dict[str, Any] = {
        "task": cfg.task,
        "simulated": True,
        "metric": metric,
        **{
            key: agg[key]["mean"] for key in ("simulation", "no_compensation", "end_to_end", "ntkd")
        },
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "torch_threads": torch.get_num_threads(),
        "ntkd_recovery": agg["ntkd"]["mean"] / agg["simulation"]["mean"],
        # per fabrication seed: NTKD accuracy / simulation accuracy, its mean and worst seed
        "ntkd_recovery_mean": sum(r["ntkd_recovery"] for r in rows) / len(rows),
        "ntkd_recovery_min": min(r["ntkd_recovery"] for r in rows),
        "runs": rows,
        "mean_std": agg,
        "teacher": {metric: teacher_test, **teacher_info},
        "student": student_info,
        "seeds": {"training": opts.seed, "fabrication": [r["fabrication_seed"] for r in rows]},
        "settings": {
            "tiny": opts.tiny,
            "epochs_override": opts.epochs,
            "data_root": opts.data_root,
            "n_train": len(data["train"]),
            "n_test": len(data["test"]),
            "config": cfg.model_dump(mode="json"),
        },
        "details": details,
        "run_dir": str(run_dir),
    }
    paths = write_report(run_dir, payload, rows, histories)
    payload["paths"] = {k: str(v) for k, v in paths.items()}
    return payload
