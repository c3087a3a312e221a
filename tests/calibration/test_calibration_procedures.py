"""Full calibration against the simulated bench's hidden truth, and the refusals.

Goals (default simulated noise): PSF error ≤ 3 %, registration ≤ 0.1 px, gain ≤ 1 %. A bad
setup (saturated, no signal, defocused, misregistered, focus out of range) must be refused
with a CalibrationError that says what to change, never silently fitted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from calib_helpers import (
    calibrate_sim,
    context_for,
    sim_config,
    small_context,
    true_effective_psfs,
)

from calibration.forward import TileGeometry
from calibration.procedures.dark import measure_camera_noise
from calibration.procedures.focus import measure_focus
from calibration.procedures.psf import measure_psfs
from calibration.procedures.registration import measure_registration
from calibration.procedures.response import measure_display_response
from calibration.runner import CalibrationOptions, run_calibration
from calibration.setup import setup_from_devices
from calibration.twin import DigitalTwin
from drivers.registry import open_devices
from drivers.sim import FaultConfig, Registration
from onnlab.errors import CalibrationError
from onnlab.optics import SensorModel


def _score(devices: Any, run: Any) -> dict[str, float]:
    bench = devices.sim_bench
    t = bench.truth
    art = run.artifact
    true = true_effective_psfs(bench)
    twin = DigitalTwin(art)
    tiles = twin.tiles
    h, w = tiles.image_hw
    corners = np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1]])
    pts = (tiles.tile_origins_px()[:, None] + corners[None]).reshape(-1, 2)
    reg = twin.model.geometry.camera_from_canvas(pts, tiles.centre_px)
    true_alpha = true.sum((1, 2, 3)) / t.design_psfs.double().sum((1, 2, 3))
    return {
        "psf": float((torch.as_tensor(art.psfs).double() - true).norm() / true.norm()),
        "reg": float(np.abs(reg - t.registration.sensor_from_canvas(pts)).max()),
        "gain": abs(art.meta.camera.gain_dn_per_e / t.sensor.gain - 1),
        "read": abs(art.meta.camera.read_noise_e / t.sensor.read_noise_e - 1),
        "focus_um": abs(art.meta.focus_position_m - t.focus.z_focus_m) * 1e6,
        "alpha": float((torch.as_tensor(art.alpha) / true_alpha - 1).abs().max()),
        "lut": float(np.abs(art.response_lut - t.display.lut()).max()),
    }


def _check(s: dict[str, float]) -> None:
    assert s["psf"] < 0.03, s
    assert s["reg"] < 0.1, s
    assert s["gain"] < 0.01, s
    assert s["read"] < 0.05, s
    assert s["focus_um"] < 10.0, s  # 0.2 px of defocus blur
    assert s["alpha"] < 0.02, s
    assert s["lut"] < 0.005, s


def test_full_calibration_recovers_the_hidden_bench(calibrated) -> None:
    _cfg, devices, run = calibrated
    _check(_score(devices, run))
    assert run.results["psf"].residual < 1.2  # misfit ≈ camera noise
    assert run.results["registration"].blob_width_ratio < 1.2


@pytest.mark.parametrize("seed", [1, 2])
def test_other_fabrications(seed: int) -> None:
    _cfg, devices, run = calibrate_sim(seed)
    try:
        _check(_score(devices, run))
    finally:
        devices.close()


def test_transport_faults_are_survived() -> None:
    """A panel that is sometimes one pattern late, frames that time out or arrive cut: late
    frames are discarded (Frame.pattern_id), failed ones retried, so the fit is still exact."""
    faults = {"slm.latency": 0.3, "camera.timeout": 0.05, "camera.incomplete": 0.05}
    bench, ctx = small_context(seed=3, faults=FaultConfig(p=faults))
    measure_camera_noise(ctx, n_frames=6)
    resp = measure_display_response(ctx)
    assert np.abs(resp.response.lut - bench.truth.display.lut()).max() < 0.005


def test_saturated_setup_is_refused() -> None:
    # So much light that even the shortest exposure saturates the white frame.
    _bench, ctx = small_context(sensor=SensorModel(full_scale_e=1e11))
    ctx.offset_dn, ctx.read_noise_dn, ctx.gain_dn_per_e = 0.0, 1.0, 0.34
    with pytest.raises(CalibrationError, match="saturated even at the shortest exposure"):
        measure_display_response(ctx)


def test_no_signal_is_refused() -> None:
    _bench, ctx = small_context(sensor=SensorModel(full_scale_e=1e-3))
    with pytest.raises(CalibrationError, match="no signal"):
        measure_camera_noise(ctx, n_frames=4)


def test_defocused_setup_is_refused() -> None:
    """Skipping focus on a defocused bench: the PSF fit itself works (it measures blurred
    PSFs), but they are far smoother than any fabricated design, so the step refuses."""
    bench, ctx = small_context(seed=1)
    measure_camera_noise(ctx, n_frames=6)
    measure_display_response(ctx)
    bench.stage.move_absolute(bench.truth.focus.z_focus_m + 0.2e-3)  # 4 px of blur
    measure_registration(ctx, n_phases=1, n_frames=2)
    with pytest.raises(CalibrationError, match="defocused"):
        measure_psfs(ctx, n_patterns=16, refine_frames=9)


def test_blur_after_the_focus_step_is_recorded_not_refused() -> None:
    """Once the focus step has put the stage at best focus, PSFs smoother than the design
    are the optic's own (scatter, zero order, quantisation of a fabricated optic): the step
    measures them and reports the ratios instead of refusing."""
    bench, ctx = small_context(seed=1)
    measure_camera_noise(ctx, n_frames=6)
    measure_display_response(ctx)
    bench.stage.move_absolute(bench.truth.focus.z_focus_m + 0.2e-3)  # blur the optic "has"
    measure_registration(ctx, n_phases=1, n_frames=2)
    ctx.focus_position_m = float(bench.stage.position_m)  # as the focus step records it
    result = measure_psfs(ctx, n_patterns=16, refine_frames=9)
    assert result.sharpness_ratio < 0.5 / 4  # nearly flat: refused without a focus step
    assert torch.isfinite(result.psfs).all() and (result.alpha > 0.05).all()


def test_a_misregistered_fit_is_refused_by_what_it_leaves_unexplained() -> None:
    """A camera rotation 50 mrad off (1 px at a tile edge) leaves 10 % of the signal
    unexplained: refused. A bright bench's small model mismatch (chi > 3, a few % unexplained:
    a fabricated optic's scatter) is not a reason to refuse."""
    from calibration.forward import Geometry
    from calibration.procedures.psf import fit_acceptable

    _bench, ctx = small_context(seed=1)
    measure_camera_noise(ctx, n_frames=6)
    measure_display_response(ctx)
    measure_registration(ctx, n_phases=1, n_frames=2)
    g = ctx.geometry
    ctx.geometry = Geometry(g.offset, g.rotation + 0.05, g.scale, g.image_shift, g.image_rotation)
    with pytest.raises(CalibrationError, match="% of the signal unexplained"):
        measure_psfs(ctx, n_patterns=16, refine_geometry=False, margin_px=0)
    assert fit_acceptable(3.1, 0.002) and fit_acceptable(2.9, 0.05)
    assert fit_acceptable(8.0, 0.035) and not fit_acceptable(3.1, 0.06)


def test_focus_outside_the_search_range_is_refused() -> None:
    # Focus 0.5 mm below the start, the sweep covers +-0.4 mm: the sharpest sample is the
    # near edge (blur 2 px there, 14 px = the simulator's cap at the far end). Much farther
    # away every sample sits at the cap, sharpness is flat and only noise would pick a side.
    bench, ctx = small_context(seed=2)
    measure_camera_noise(ctx, n_frames=6)
    bench.stage.move_absolute(bench.truth.focus.z_focus_m + 0.5e-3)
    with pytest.raises(CalibrationError, match="edge of the searched range"):
        measure_focus(ctx, passes=1, points_per_pass=7)


def test_tiles_off_the_camera_are_refused() -> None:
    # The relay put the tiles 12 px lower than designed: the bottom row is cut by the frame.
    _bench, ctx = small_context(seed=4, registration=Registration(offset_px=(12.0, 0.0)))
    measure_camera_noise(ctx, n_frames=6)
    with pytest.raises(CalibrationError, match="outside the camera frame"):
        measure_registration(ctx, n_phases=1, n_frames=2)


def test_wrong_tile_layout_is_refused() -> None:
    # The optic has 1x4 tiles but the configuration says 2x2: the dots are not where expected.
    bench, ctx = small_context(seed=4, rows=1, cols=4)
    measure_camera_noise(ctx, n_frames=6)
    ctx.tiles = TileGeometry(2, 2, 4, ctx.image_hw, bench.camera.shape_hw, 4)
    with pytest.raises(CalibrationError, match="dots were found"):
        measure_registration(ctx, n_phases=1, n_frames=2)


def test_colour_psfs_are_separated_per_channel() -> None:
    """RGB panel: independent random patterns per channel give each R, G, B kernel."""
    bench, ctx = small_context(kernels=2, image_hw=(32, 32), seed=5, task="cifar10")
    bench.stage.move_absolute(bench.truth.focus.z_focus_m)
    measure_camera_noise(ctx, n_frames=8)
    measure_display_response(ctx)
    measure_registration(ctx, n_phases=2, n_frames=2)
    res = measure_psfs(ctx, n_patterns=96, refine_frames=13)
    true = true_effective_psfs(bench)
    per_channel = (res.psfs.double() - true).norm(dim=(2, 3)) / true.norm(dim=(2, 3))
    assert res.psfs.shape == (2, 3, 7, 7)
    # Noise-limited at 96 patterns: 0.027-0.049 over 12 noise realisations (channel
    # cross-talk, the failure this guards against, gives errors of order 1).
    assert float(per_channel.max()) < 0.06, per_channel


def test_calibration_frames_are_exposed_after_the_pattern_is_shown() -> None:
    """A free-running camera at full rate may hand back a frame exposed before the pattern:
    calibration switches it to a synchronised mode for its steps and restores it after."""
    cfg = sim_config(0)
    devices = open_devices(cfg)
    setup = setup_from_devices(cfg, devices)
    calls: list[str] = []

    class FreeRunningCamera:
        """The simulated camera as a GenICam camera without a software trigger."""

        trigger_modes = ("free_run",)

        def __init__(self, inner: object) -> None:
            self._inner, self.frame_policy = inner, "full_rate"

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

        def set_frame_policy(self, policy: str) -> str:
            calls.append(policy)
            previous, self.frame_policy = self.frame_policy, policy
            return previous

    setup.camera = FreeRunningCamera(setup.camera)
    run_calibration(setup, steps=["dark"], options=CalibrationOptions.quick())
    assert calls == ["after_call", "full_rate"]


def test_registration_accepts_sharp_and_wide_designs() -> None:
    """Registration may not depend on the PSFs looking like the design: a point-like design
    (one lit pixel per kernel, blobs 1.7x+ wider after display and camera sampling -- what
    stopped `finetune --sim --data-root` on full MNIST) and a flat 7x7 design both register."""
    truth_reg = Registration(offset_px=(0.6, -0.4), rotation_rad=0.003, scale=1.002)
    for kind in ("sharp", "wide"):
        design = torch.zeros(4, 1, 7, 7)
        if kind == "sharp":
            design[:, :, 3, 3] = 0.5
        else:
            design[:] = 0.5 / 49
        bench, ctx = context_for(design, (24, 24), seed=3, registration=truth_reg)
        measure_camera_noise(ctx, n_frames=6)
        measure_display_response(ctx)
        bench.stage.move_absolute(bench.truth.focus.z_focus_m)
        res = measure_registration(ctx, n_phases=1, n_frames=2)
        if kind == "sharp":
            assert res.blob_width_ratio > 1.5  # the old design-width check refused this
        assert res.residual < 0.1


def test_a_geometry_refinement_that_fits_worse_is_not_kept(monkeypatch) -> None:
    """The psf step refines the registration on a subset of frames; when that refined geometry
    explains all frames worse (it happened on a sharp, fully trained MNIST design, and the
    leakage model then made it worse still), the measured registration is kept."""
    import dataclasses

    import calibration.procedures.psf as psf_step

    _bench, ctx = small_context(seed=1)
    measure_camera_noise(ctx, n_frames=6)
    measure_display_response(ctx)
    measure_registration(ctx)
    measured = ctx.geometry

    def astray(model, *args, **kwargs):
        wrong = dataclasses.replace(model.geometry, offset=model.geometry.offset + 0.6)
        model.set_geometry(wrong)
        return wrong, None, None

    monkeypatch.setattr(psf_step, "refine_geometry_varpro", astray)
    result = measure_psfs(ctx, n_patterns=48, refine_frames=13)
    assert torch.equal(ctx.geometry.offset, measured.offset)
    assert result.residual < 1.5 and result.margin_px == 0


def test_only_tiles_their_dots_measured_can_be_judged_misplaced() -> None:
    """A tile without measured dots has no measured centroid shift (its value is set by the
    gauge and a weak tie), so the misplacement check looks at measured tiles only."""
    from calibration.procedures.registration import worst_measured_shift

    shifts = np.array([[0.1, 0.0], [18.0, 3.0], [0.4, 0.2], [0.0, 0.3]])
    tiles = np.array([0, 0, 0, 2, 2, 2, 3, 3, 3, 3, 1])  # tile 1: a single dot
    assert worst_measured_shift(shifts, tiles) == 2
    assert worst_measured_shift(shifts, tiles, min_points=1) == 1
    assert worst_measured_shift(shifts, np.array([1, 1]), min_points=3) is None
