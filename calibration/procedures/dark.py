"""Step "dark": dark frames + photon-transfer sweep → offset, read noise, gain, saturation.

Why this order: dark frames (black display at the shortest exposure: no shutter needed) give
the offset and read noise that every later step subtracts. A white display at a few
exposures then spans the whole signal range for the mean–variance fit; one deliberately
over-exposed stack shows where pixels stop responding (saturation), and the linear range is
where variance still follows the line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from calibration.fitting.noise import (
    PhotonTransferFit,
    dark_stats,
    photon_transfer_fit,
    saturation_level,
)
from calibration.procedures.base import BenchContext, StepResult
from onnlab.errors import CalibrationError


@dataclass(frozen=True)
class CameraNoiseResult(StepResult):
    """Camera model: DN = offset + gain · (electrons + read noise), clipped at saturation."""

    offset_dn: float
    read_noise_dn: float
    read_noise_e: float
    gain_dn_per_e: float
    saturation_dn: float
    linear_range_dn: tuple[float, float]
    ptc: PhotonTransferFit
    exposures_s: tuple[float, ...]


def measure_camera_noise(
    ctx: BenchContext,
    *,
    n_dark: int = 16,
    n_frames: int = 12,
    exposure_fractions: tuple[float, ...] = (0.12, 0.3, 0.6, 0.9),
) -> CameraNoiseResult:
    """Run the dark + photon-transfer procedure and store the results in ``ctx``.

    Refuses (CalibrationError) when the dark level is not dark (light leak), when no exposure
    gives an unsaturated lit frame, or when the mean–variance relation is not a line.
    """
    t0 = time.perf_counter()
    n0 = ctx.frames_captured
    cam = ctx.camera
    start_exposure = float(cam.exposure_s)
    lo, _hi = cam.exposure_range_s
    top = float((1 << int(cam.bit_depth)) - 1)

    ctx.report("dark frames", 0.0)
    ctx.set_exposure(lo)
    dark = ctx.capture(ctx.uniform(0), n_dark, "dark")
    stats = dark_stats(dark, top)
    if stats.read_noise_dn > 0.05 * top or stats.offset_dn > 0.5 * top:
        raise CalibrationError(
            f"dark frames are not dark (offset {stats.offset_dn:.1f} DN, noise "
            f"{stats.read_noise_dn:.1f} DN at the shortest exposure); cover stray light"
        )
    ctx.offset_dn, ctx.read_noise_dn = stats.offset_dn, stats.read_noise_dn

    # Find the exposure that fills ~90 % of the ADC with a white display.
    ctx.report("photon transfer: auto exposure", 0.2)
    ctx.set_exposure(start_exposure)
    white = ctx.uniform(255)
    full = ctx.auto_expose(white, target=0.9)
    stacks, exposures = [], []
    for i, frac in enumerate(exposure_fractions):
        ctx.report(f"photon transfer {i + 1}/{len(exposure_fractions)}", 0.25 + 0.6 * i / 4)
        exposures.append(ctx.set_exposure(full * frac))
        stacks.append(ctx.capture(white, n_frames, f"ptc{i}"))
    ctx.report("saturation", 0.9)
    ctx.set_exposure(full * 3.0)
    over = ctx.capture(white, 4, "saturate")
    sat = saturation_level(over)
    if sat is None:  # never saturated (huge full well): the ADC limit is the ceiling
        sat = top
    ctx.saturation_dn = sat
    for s in stacks:
        if (s >= sat - 0.5).mean() > 0.05:
            raise CalibrationError(
                "photon transfer frames saturate; reduce display brightness or exposure"
            )
    ptc = photon_transfer_fit(
        stacks, stats.offset_dn, saturation_dn=sat, read_noise_dn=stats.read_noise_dn
    )
    ctx.gain_dn_per_e = ptc.gain_dn_per_e
    ctx.set_exposure(full * 0.6)
    read_e = stats.read_noise_dn / ptc.gain_dn_per_e
    return CameraNoiseResult(
        residual=ptc.residual,
        n_frames=ctx.frames_captured - n0,
        seconds=time.perf_counter() - t0,
        offset_dn=stats.offset_dn,
        read_noise_dn=stats.read_noise_dn,
        read_noise_e=float(read_e),
        gain_dn_per_e=ptc.gain_dn_per_e,
        saturation_dn=float(sat),
        linear_range_dn=ptc.linear_range_dn,
        ptc=ptc,
        exposures_s=tuple(float(e) for e in exposures),
    )


def apply_known_camera(ctx: BenchContext, offset_dn: float, gain: float, sat: float) -> None:
    """Seed ``ctx`` from a previous calibration when the dark step is skipped."""
    ctx.offset_dn, ctx.gain_dn_per_e, ctx.saturation_dn = float(offset_dn), float(gain), float(sat)


__all__ = ["CameraNoiseResult", "apply_known_camera", "measure_camera_noise"]
