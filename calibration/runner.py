"""Run the calibration steps in order on any bench and assemble a `CalibrationArtifact`.

Order matters and is fixed: the camera model (dark) is needed to read every later frame, the
display response to know what intensity a pattern really had, focus before anything that
measures PSF shapes, registration before the PSF fit. Steps can be skipped; what they would
have measured then comes from a previous artifact (``previous``) or, failing that, from the
design (identity registration, nominal display LUT) — and the artifact records which steps
really ran, so nobody mistakes a default for a measurement.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from calibration.artifact import (
    CalibrationArtifact,
    CalibrationMeta,
    CameraRecord,
    DeviceRecord,
    DisplayRecord,
    LayoutRecord,
    RegistrationRecord,
    StepRecord,
    design_hash,
    toolkit_versions,
)
from calibration.fitting.response import DisplayResponse, fit_display_response
from calibration.forward import Geometry, TileGeometry
from calibration.procedures.base import BenchContext, Progress, StepResult, single_thread
from calibration.procedures.dark import measure_camera_noise
from calibration.procedures.focus import measure_focus
from calibration.procedures.geometry import composite_offset
from calibration.procedures.psf import measure_psfs
from calibration.procedures.registration import measure_registration
from calibration.procedures.response import measure_display_response
from drivers.protocols import SLM, Camera, Stage
from drivers.sync import exposure_after_show
from onnlab.errors import CalibrationError

STEPS: tuple[str, ...] = ("dark", "response", "focus", "registration", "psf")


class CalibrationOptions(BaseModel):
    """Knobs of the procedures (defaults: the bench-quality settings)."""

    model_config = ConfigDict(extra="forbid")

    ptc_frames: int = 16
    response_frames: int = 2
    focus_half_range_m: float = 0.4e-3
    focus_points: int = 13
    focus_passes: int = 3
    registration_phases: int = 4
    registration_frames: int = 3
    psf_method: str = "random"
    psf_patterns: int = 96
    psf_prior_rel_std: float | None = 0.25
    psf_refine_frames: int = 25
    # Refuse a PSF fit that leaves more than this fraction of the signal power unexplained
    # (and chi > 3): see calibration.procedures.psf.fit_acceptable.
    psf_max_unexplained: float = Field(0.05, gt=0, lt=1)
    seed: int = 1234

    @classmethod
    def quick(cls) -> CalibrationOptions:
        """Fewer frames everywhere: for tests and smoke runs (PSFs noisier, ~2x faster)."""
        return cls(
            focus_points=11,
            registration_phases=2,
            registration_frames=2,
            psf_patterns=48,
            psf_refine_frames=13,
        )


@dataclass
class BenchSetup:
    """Everything calibration needs to know about a bench besides the devices' own answers."""

    slm: SLM
    camera: Camera
    stage: Stage | None
    tiles: TileGeometry
    design_psfs: torch.Tensor
    bench_config_hash: str
    electrons_per_unit: float | None = None
    device_records: dict[str, DeviceRecord] = field(default_factory=dict)


@dataclass
class CalibrationRun:
    """The artifact plus every step's full result (curves, maps) for reports."""

    artifact: CalibrationArtifact
    results: dict[str, StepResult]
    seconds: float


def device_record(dev: Any) -> DeviceRecord:
    """Identity of a device from its ``info()`` (never fails: a calibration must still save)."""
    try:
        info = dict(dev.info())
    except Exception:  # noqa: BLE001 - identity is best effort
        info = {}
    return DeviceRecord(
        device_id=str(getattr(dev, "device_id", "?")),
        kind=str(info.get("kind", getattr(dev, "kind", ""))),
        implementation=str(info.get("implementation", "")),
        serial=str(info.get("serial", "") or ""),
        model=str(info.get("model", "") or ""),
    )


def run_calibration(
    setup: BenchSetup,
    *,
    steps: Sequence[str] = STEPS,
    options: CalibrationOptions | None = None,
    progress: Progress | None = None,
    previous: CalibrationArtifact | None = None,
    checkpoint: str | Path | None = None,
    notes: dict[str, Any] | None = None,
) -> CalibrationRun:
    """Run ``steps`` (any subset of `STEPS`, always in canonical order) → `CalibrationRun`.

    ``checkpoint``: a file rewritten (atomically) after every finished step with everything
    measured so far. When it exists at the start, the run resumes from it: its steps are not
    measured again, its values seed the rest, and the stage returns to its focus position.
    It is checked against this bench and design like any artifact. ``notes`` are recorded
    in the artifact's metadata (e.g. whether the devices were simulated).
    """
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"steps: unknown {unknown}; expected a subset of {list(STEPS)}")
    opts = options or CalibrationOptions()
    t0 = time.perf_counter()
    ctx = BenchContext(
        slm=setup.slm,
        camera=setup.camera,
        stage=setup.stage,
        tiles=setup.tiles,
        design_psfs=setup.design_psfs.detach().float(),
        electrons_per_unit=setup.electrons_per_unit,
        progress=progress,
    )
    if previous is not None:
        _seed_from(ctx, previous)
    prior = load_checkpoint(checkpoint, setup)
    if prior is not None:
        _seed_from(ctx, prior)
        _restore_focus(ctx, prior)
        previous = prior
    results: dict[str, StepResult] = {}
    # Every calibration frame must be exposed after its pattern was shown: a free-running camera
    # at full rate could hand back a frame exposed before the pattern reached the panel.
    with single_thread(), exposure_after_show(setup.camera):
        for name in STEPS:
            if name in steps and (prior is None or name not in prior.meta.steps):
                results[name] = _run_step(name, ctx, opts)
                if checkpoint is not None:
                    build_artifact(setup, ctx, results, previous, prior, notes).save(checkpoint)
        art = build_artifact(setup, ctx, results, previous, prior, notes)
    return CalibrationRun(artifact=art, results=results, seconds=time.perf_counter() - t0)


def load_checkpoint(path: str | Path | None, setup: BenchSetup) -> CalibrationArtifact | None:
    """The partial artifact of an interrupted run of this bench and design, if there is one."""
    if path is None or not Path(path).is_file():
        return None
    return CalibrationArtifact.load(
        path, bench_config=setup.bench_config_hash, design=setup.design_psfs.detach().float()
    )


def _restore_focus(ctx: BenchContext, art: CalibrationArtifact) -> None:
    """Put the stage back where the interrupted run's focus step left it."""
    z = art.meta.focus_position_m
    if z is None or "focus" not in art.meta.steps or ctx.stage is None:
        return
    ctx.stage.move_absolute(float(z), timeout_s=max(ctx.timeout_s, 30.0))
    ctx.focus_position_m = float(ctx.stage.position_m)


def _run_step(name: str, ctx: BenchContext, opts: CalibrationOptions) -> StepResult:
    """One procedure with the options that concern it."""
    ctx.report(f"{name}: start", 0.0)
    try:
        if name == "dark":
            return measure_camera_noise(ctx, n_frames=opts.ptc_frames)
        if name == "response":
            return measure_display_response(ctx, n_frames=opts.response_frames)
        if name == "focus":
            return measure_focus(
                ctx,
                search_half_range_m=opts.focus_half_range_m,
                points_per_pass=opts.focus_points,
                passes=opts.focus_passes,
            )
        if name == "registration":
            return measure_registration(
                ctx, n_phases=opts.registration_phases, n_frames=opts.registration_frames
            )
        return measure_psfs(
            ctx,
            method=opts.psf_method,
            n_patterns=opts.psf_patterns,
            seed=opts.seed,
            prior_rel_std=opts.psf_prior_rel_std,
            refine_frames=opts.psf_refine_frames,
            max_unexplained=opts.psf_max_unexplained,
        )
    finally:
        ctx.report(f"{name}: done", 1.0)


def _seed_from(ctx: BenchContext, art: CalibrationArtifact) -> None:
    """Start from a previous calibration of the same bench (for partial re-runs)."""
    cam, reg = art.meta.camera, art.meta.registration
    ctx.offset_dn, ctx.gain_dn_per_e = cam.offset_dn, cam.gain_dn_per_e
    ctx.read_noise_dn = cam.read_noise_e * cam.gain_dn_per_e
    ctx.saturation_dn = cam.saturation_dn
    ctx.response = DisplayResponse(
        lut=np.asarray(art.response_lut, np.float64),
        gamma=art.meta.display.gamma,
        black_level=art.meta.display.black_level,
        residual=0.0,
    )
    ctx.geometry = Geometry.from_values(
        (reg.ty, reg.tx), reg.rotation_rad, reg.scale, reg.image_shift_px, reg.image_rotation_rad
    )
    ctx.composite_offset = composite_offset(ctx.geometry)
    ctx.extras["previous_psfs"] = torch.as_tensor(art.psfs)


def _nominal_response(slm: SLM) -> DisplayResponse:
    """The SLM's datasheet LUT, fitted like a measurement (used only when never measured)."""
    lut = np.asarray(slm.response_lut, np.float64)
    levels = np.linspace(0, 255, len(lut))
    return fit_display_response(levels, np.maximum(lut, 1e-9))


def build_artifact(
    setup: BenchSetup,
    ctx: BenchContext,
    results: dict[str, StepResult],
    previous: CalibrationArtifact | None,
    prior: CalibrationArtifact | None = None,
    notes: dict[str, Any] | None = None,
) -> CalibrationArtifact:
    """Assemble the artifact from what ``ctx`` learned (measured, seeded or nominal).

    ``prior``: the checkpoint of the interrupted run this one resumes; its step records and
    step arrays are kept for the steps not measured again.
    """
    design = setup.design_psfs.detach().float()
    n_k, n_c, k, _ = design.shape
    psf_res = results.get("psf")
    if psf_res is not None:
        psfs = psf_res.psfs  # type: ignore[attr-defined]
        exposure = float(psf_res.exposure_s)  # type: ignore[attr-defined]
    else:
        psfs = ctx.extras.get("previous_psfs", design)
        exposure = previous.meta.camera.exposure_s if previous else float(ctx.camera.exposure_s)
    psfs = torch.as_tensor(psfs, dtype=torch.float32)
    alpha = (psfs.sum((1, 2, 3)) / design.sum((1, 2, 3)).clamp_min(1e-30)).numpy()
    if ctx.gain_dn_per_e is None:
        raise CalibrationError("no camera model: run the dark step (or pass a previous artifact)")
    response = ctx.response or _nominal_response(setup.slm)
    geom = ctx.geometry or Geometry.identity()
    gv = geom.values()
    read_dn = ctx.read_noise_dn or 0.0
    dark: Any = results.get("dark")
    if dark is not None:
        lin = dark.linear_range_dn
    elif previous is not None:
        lin = previous.meta.camera.linear_range_dn
    else:
        lin = (ctx.offset, ctx.saturation)
    reg_res = results.get("registration")
    steps = {
        name: StepRecord(
            residual=float(r.residual),
            seconds=float(r.seconds),
            n_frames=int(r.n_frames),
            values=_step_values(name, r),
        )
        for name, r in results.items()
    }
    carried = {}
    if prior is not None:
        carried = {k: v for k, v in prior.meta.steps.items() if k not in steps}
    merged = {**carried, **steps}
    steps = {name: merged[name] for name in STEPS if name in merged}
    frames_before = 0 if prior is None else int(prior.meta.notes.get("frames_captured", 0))
    h, w = setup.tiles.image_hw
    meta = CalibrationMeta(
        bench_config_hash=setup.bench_config_hash,
        design_hash=design_hash(design),
        devices=setup.device_records,
        versions=toolkit_versions(),
        layout=LayoutRecord(
            n_kernels=n_k,
            in_channels=n_c,
            kernel_px=k,
            image_hw=(h, w),
            rows=setup.tiles.rows,
            cols=setup.tiles.cols,
            gap_px=setup.tiles.gap_px,
            camera_hw=setup.tiles.camera_hw,
        ),
        camera=CameraRecord(
            offset_dn=ctx.offset,
            gain_dn_per_e=float(ctx.gain_dn_per_e),
            read_noise_e=read_dn / float(ctx.gain_dn_per_e),
            saturation_dn=ctx.saturation,
            linear_range_dn=tuple(float(v) for v in lin),  # type: ignore[arg-type]
            bit_depth=int(getattr(setup.camera, "bit_depth", 16)),
            exposure_s=exposure,
            electrons_per_unit=float(setup.electrons_per_unit or 1.0),
            radiometry="absolute" if setup.electrons_per_unit else "relative",
        ),
        display=DisplayRecord(gamma=response.gamma, black_level=response.black_level),
        registration=RegistrationRecord(
            scale=float(gv["scale"]),
            rotation_rad=float(gv["rotation_rad"]),  # type: ignore[arg-type]
            ty=float(gv["offset_px"][0]),
            tx=float(gv["offset_px"][1]),  # type: ignore[index]
            image_shift_px=tuple(gv["image_shift_px"]),  # type: ignore[arg-type]
            image_rotation_rad=float(gv["image_rotation_rad"]),  # type: ignore[arg-type]
            rms_px=float(reg_res.residual) if reg_res is not None else 0.0,
        ),
        focus_position_m=ctx.focus_position_m,
        steps=steps,
        notes={
            **(notes or {}),
            "steps_run": list(steps),
            "frames_captured": frames_before + ctx.frames_captured,
            **({"resumed_from": list(carried)} if carried else {}),
        },
    )
    arrays: dict[str, Any] = {
        "psfs": psfs.numpy(),
        "design_psfs": design.numpy(),
        "alpha": alpha,
        "response_lut": response.lut,
    }
    if prior is not None:
        keep = {name for step in carried for name in STEP_ARRAYS[step]}
        arrays.update({k: v for k, v in prior.arrays.items() if k in keep})
    for name, r in results.items():
        arrays.update(_step_arrays(name, r))
    return CalibrationArtifact(meta, arrays)


# The report arrays each step writes (see `_step_arrays`): carried over on resume.
STEP_ARRAYS: dict[str, tuple[str, ...]] = {
    "dark": ("ptc_means_dn", "ptc_vars_dn2"),
    "response": ("response_levels", "response_measured"),
    "focus": ("focus_positions_m", "focus_metric"),
    "registration": ("fiducials_measured_yx", "fiducials_predicted_yx"),
    "psf": ("psf_residual_map_dn", "psfs_window", "background_maps"),
}


def _step_values(name: str, r: StepResult) -> dict[str, float]:
    """Headline numbers of a step (scalars only) for the artifact and the summary table."""
    keys = {
        "dark": ("offset_dn", "read_noise_e", "gain_dn_per_e", "saturation_dn"),
        "response": (),
        "focus": ("position_m", "contrast"),
        "registration": ("blob_width_ratio",),
        "psf": (
            "exposure_s",
            "rel_residual",
            "sharpness_ratio",
            "unexplained_fraction",
            "margin_px",
        ),
    }[name]
    out = {key: float(getattr(r, key)) for key in keys}
    if name == "response":
        out.update(gamma=r.response.gamma, black_level=r.response.black_level)  # type: ignore[attr-defined]
    return out


def _step_arrays(name: str, r: Any) -> dict[str, np.ndarray]:
    """Curves and maps worth keeping for reports (small)."""
    if name == "dark":
        return {"ptc_means_dn": r.ptc.bin_means_dn, "ptc_vars_dn2": r.ptc.bin_vars_dn2}
    if name == "response":
        return {"response_levels": r.levels, "response_measured": r.intensity}
    if name == "focus":
        return {"focus_positions_m": r.positions_m, "focus_metric": r.metric}
    if name == "registration":
        return {"fiducials_measured_yx": r.measured_yx, "fiducials_predicted_yx": r.predicted_yx}
    out = {"psf_residual_map_dn": r.residual_map}
    if getattr(r, "window_psfs", None) is not None:  # leakage model (window PSFs, background)
        out["psfs_window"] = np.asarray(r.window_psfs)
        if r.background is not None:
            out["background_maps"] = np.asarray(r.background)
    return out
