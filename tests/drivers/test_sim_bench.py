"""Physics of the simulated bench: each hidden quantity really shows up in the frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drivers.errors import FrameIncomplete
from drivers.sim import (
    DisplayResponse,
    FaultConfig,
    Focus,
    Registration,
    SimulatedBench,
    design_psfs,
)
from onnlab.optics import SensorModel, cut_tiles, optical_conv2d

NOISELESS = SensorModel(
    poisson=False,
    read_noise=False,
    quantize=False,
    full_well_e=1e9,
    bit_depth=16,
    gain_dn_per_e=1.0,
    full_scale_e=10_000.0,
)


def _ideal(psfs: torch.Tensor, **kw) -> SimulatedBench:
    opts = dict(
        error_strength=0.0,
        display=DisplayResponse(1.0, 0.0),
        sensor=NOISELESS,
    )
    opts.update(kw)
    return SimulatedBench(psfs, (28, 28), **opts)


def _delta_psfs(k: int = 8, c: int = 1, px: int = 7, energy: float = 0.5) -> torch.Tensor:
    p = torch.zeros(k, c, px, px)
    p[:, :, px // 2, px // 2] = energy / c
    return p


def test_ideal_bench_equals_optical_conv2d() -> None:
    psfs = design_psfs("mnist", 8, 7, seed=1)
    bench = _ideal(psfs)
    x = torch.rand(3, 1, 28, 28)
    sensor = torch.from_numpy(np.stack([f.pixels for f in bench.render(x)]).astype(np.float32))
    lay = bench.truth.layout
    tiles = cut_tiles(sensor, lay.rows, lay.cols, lay.tile_hw, lay.gap_px, origin_px=lay.origin_px)
    ref = optical_conv2d(torch.round(x * 255) / 255, psfs) * NOISELESS.full_scale_e
    assert torch.allclose(tiles, ref, atol=0.51)  # frames are integer DN
    assert ref.max() > 1000


def test_display_gamma_and_black_level_shape_the_response() -> None:
    truth_display = DisplayResponse(gamma=2.4, black_level=0.02)
    bench = _ideal(design_psfs("mnist", 8, 7, seed=2), display=truth_display)
    means = []
    for g in (64, 128, 255):
        bench.slm.show(np.full((28, 28), g, np.uint8), pattern_id=g)
        frame = bench.camera.capture()
        means.append(frame.pixels[20:30, 20:30].astype(float).mean())  # inside tile 0
    expected = truth_display.lut()[[64, 128, 255]]
    assert np.allclose(np.array(means) / means[-1], expected / expected[-1], rtol=0.01)
    linear = np.array([64, 128, 255]) / 255
    assert not np.allclose(np.array(means) / means[-1], linear, rtol=0.1)


def test_registration_puts_tiles_where_truth_says() -> None:
    reg = Registration(offset_px=(1.3, -2.2), rotation_rad=0.01, scale=1.01)
    bench = _ideal(_delta_psfs(), registration=reg)
    img = np.zeros((28, 28))
    img[13:15, 13:15] = 1.0  # a 2x2 spot centred on (13.5, 13.5) = tile centre
    bench.slm.show(img)
    pix = bench.camera.capture().pixels.astype(float)
    centres = bench.truth.tile_centers_px()
    yy, xx = np.mgrid[: pix.shape[0], : pix.shape[1]]
    for cy, cx in centres:
        win = (np.abs(yy - cy) < 5) & (np.abs(xx - cx) < 5)
        w = pix * win
        got = np.array([(w * yy).sum(), (w * xx).sum()]) / w.sum()
        assert np.allclose(got, [cy, cx], atol=0.1)
    nominal = bench.truth.layout.tile_centers_px(8)
    assert np.abs(centres - nominal).max() > 1.0  # the test would notice a missing warp


def test_defocus_from_stage_position_blurs_but_keeps_energy() -> None:
    bench = _ideal(_delta_psfs(), focus=Focus(z_focus_m=12.5e-3, k_defocus_px_per_m=2e4))
    img = np.zeros((28, 28))
    img[14, 14] = 1.0
    bench.slm.show(img)
    sharp = bench.camera.capture().pixels.astype(float)
    bench.stage.move_relative(100e-6)  # sigma = 2 px
    blurred = bench.camera.capture().pixels.astype(float)
    assert blurred.max() < 0.2 * sharp.max()
    assert blurred.sum() == pytest.approx(sharp.sum(), rel=0.01)
    assert bench.camera.capture().meta["stage_z_m"] == pytest.approx(12.6e-3)


def test_noise_statistics_match_sensor_model_on_both_paths() -> None:
    sensor = SensorModel(full_scale_e=10_000, read_noise_e=5.0, offset_dn=100.0, bit_depth=14)
    bench = SimulatedBench(design_psfs("mnist", 8, 7, seed=3), (28, 28), seed=3, sensor=sensor)
    img = np.full((28, 28), 200, np.uint8)
    bench.slm.show(img)
    single = np.stack([bench.camera.capture().pixels for _ in range(150)]).astype(float)
    batch = np.stack([f.pixels for f in bench.render(np.full((150, 1, 28, 28), 200, np.uint8))])
    mean_dn = bench.expected_dn(img[None, None]).numpy()[0]
    var_dn = sensor.variance_dn((torch.from_numpy(mean_dn) - 100.0) / sensor.gain).numpy()
    bright = mean_dn > mean_dn.max() * 0.5
    for stack in (single, batch.astype(float)):
        assert np.allclose(stack.mean(0)[bright].mean(), mean_dn[bright].mean(), rtol=0.01)
        ratio = stack.var(0, ddof=1)[bright].mean() / var_dn[bright].mean()
        assert 0.9 < ratio < 1.1
    dark = stack.mean(0)[:3, :3].mean()
    assert dark == pytest.approx(100.0, abs=0.5)


def test_exposure_scales_signal_linearly() -> None:
    bench = _ideal(design_psfs("mnist", 8, 7, seed=4))
    bench.slm.show(np.full((28, 28), 255, np.uint8))
    bench.camera.exposure_s = 0.5
    a = bench.camera.capture()
    bench.camera.set_exposure(0.25)
    b = bench.camera.capture()
    assert (a.exposure_s, b.exposure_s) == (0.5, 0.25)
    assert a.pixels.astype(float).sum() == pytest.approx(2 * b.pixels.astype(float).sum(), rel=1e-3)


def test_rgb_display_sums_channels_on_mono_sensor() -> None:
    psfs = design_psfs("cifar10", 4, 5, seed=5)
    bench = SimulatedBench(
        psfs, (28, 28), error_strength=0.0, display=DisplayResponse(1.0, 0.0), sensor=NOISELESS
    )
    assert bench.slm.channels == 3
    rgb = np.zeros((28, 28, 3), np.uint8)
    rgb[..., 1] = 255
    bench.slm.show(rgb)
    only_green = bench.camera.capture().pixels.astype(float)
    bench.slm.show(np.full((28, 28, 3), 255, np.uint8))
    white = bench.camera.capture().pixels.astype(float)
    green_share = psfs[:, 1].sum() / psfs.sum()
    assert only_green.sum() / white.sum() == pytest.approx(float(green_share), rel=0.02)
    with pytest.raises(ValueError, match="pattern"):
        bench.slm.show(np.zeros((28, 28)))


def test_frames_own_their_pixels_and_seed_is_deterministic() -> None:
    psfs = design_psfs("mnist", 8, 7, seed=6)
    a, b = SimulatedBench(psfs, (28, 28), seed=9), SimulatedBench(psfs, (28, 28), seed=9)
    img = np.random.default_rng(0).random((28, 28))
    a.slm.show(img)
    b.slm.show(img)
    f1, f2 = a.camera.capture(), b.camera.capture()
    assert np.array_equal(f1.pixels, f2.pixels)
    f3 = a.camera.capture()
    f3.pixels[:] = 0
    assert f1.pixels.any() and not np.shares_memory(f1.pixels, f3.pixels)
    other = SimulatedBench(psfs, (28, 28), seed=10)
    assert other.truth.display.gamma != a.truth.display.gamma
    assert not torch.equal(other.truth.gain, a.truth.gain)


def test_noise_is_a_pure_function_of_what_is_shown() -> None:
    """Per-frame noise: history (other frames, faults, batching) never changes a frame."""
    psfs = design_psfs("mnist", 8, 7, seed=6)
    rng = np.random.default_rng(3)
    imgs = (rng.random((3, 28, 28)) * 255).astype(np.uint8)

    def grab(bench: SimulatedBench, i: int, **kw) -> np.ndarray:
        bench.slm.show(imgs[i], pattern_id=i)
        return bench.camera.capture(**kw).pixels

    a = SimulatedBench(psfs, (28, 28), seed=9)
    first = [grab(a, i) for i in range(3)]
    # a fresh bench that saw other frames first and lost one to a fault (a resumed capture)
    b = SimulatedBench(
        psfs, (28, 28), seed=9, faults=FaultConfig(schedule={"camera.incomplete": [1]})
    )
    assert np.array_equal(grab(b, 2), first[2])
    with pytest.raises(FrameIncomplete):
        grab(b, 0)
    assert np.array_equal(grab(b, 0), first[0])  # the undelivered frame did not count
    # a repeat of the same pattern is a new, independent draw (calibration averages them)
    again = grab(a, 0)
    mean = a.expected_dn(imgs[:1, None])[0].numpy()
    lit = mean > 200
    assert not np.array_equal(again, first[0])
    r = np.corrcoef((again - mean)[lit], (first[0] - mean)[lit].astype(float))[0, 1]
    assert abs(r) < 0.1
    # the batched path follows the same rule: same frames as show + capture
    batch = SimulatedBench(psfs, (28, 28), seed=9).render(imgs[:, None], pattern_ids=[0, 1, 2])
    for f, ref in zip(batch, first, strict=True):
        assert np.array_equal(f.pixels, ref)
    # the same pattern under another id gets other noise
    c = SimulatedBench(psfs, (28, 28), seed=9)
    c.slm.show(imgs[0], pattern_id="other")
    assert not np.array_equal(c.camera.capture().pixels, first[0])


def test_frame_ids_follow_a_long_show_capture_stream() -> None:
    """200 show/capture pairs: every frame carries its pattern and a consecutive frame id.
    (Capture speed is measured by `onnlab bench calibration`'s frame_timing, not here.)"""
    bench = SimulatedBench(design_psfs("mnist", 8, 7, seed=7), (28, 28))
    img = np.random.default_rng(1).random((28, 28))
    for i in range(200):
        bench.slm.show(img, pattern_id=i)
        frame = bench.camera.capture()
        assert frame.pattern_id == i and frame.frame_id == i


def test_bad_bench_parameters_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="design_psfs"):
        SimulatedBench(torch.rand(8, 7, 7), (28, 28))
    with pytest.raises(ValueError, match="image_hw"):
        SimulatedBench(torch.rand(8, 1, 7, 7), (28,))
    with pytest.raises(ValueError, match="rows"):
        SimulatedBench(torch.rand(8, 1, 7, 7), (28, 28), rows=1, cols=2)
    bench = SimulatedBench(torch.rand(2, 1, 3, 3) * 0.05, (8, 8))
    with pytest.raises(ValueError, match="images"):
        bench.render(torch.rand(2, 1, 9, 9))


def test_devices_share_one_explicit_state_not_each_others_privates() -> None:
    """Issue 16/17: the camera read `bench.slm._displayed_for_exposure()` and
    `bench.stage._z_m`; the shared physical state is now one `BenchState`."""
    import inspect

    from drivers.sim import devices
    from drivers.sim.state import BenchState

    src = inspect.getsource(devices)
    assert "bench.slm" not in src and "bench.stage" not in src
    bench = _ideal(_delta_psfs())
    assert isinstance(bench.state, BenchState)
    bench.stage.move_absolute(12.6e-3)
    assert bench.state.stage_z_m == pytest.approx(12.6e-3)
    grey = np.full(bench.image_hw, 200, np.uint8)
    bench.slm.show(grey, pattern_id="p")
    assert bench.state.displayed_id == "p"
    frame = bench.camera.capture()
    assert frame.pattern_id == "p" and frame.meta["stage_z_m"] == pytest.approx(12.6e-3)
    bench.state.stage_z_m = 12.0e-3  # one source of truth: the camera sees the new z
    assert bench.camera.capture().meta["stage_z_m"] == pytest.approx(12.0e-3)
    assert bench.stage.get_position() == pytest.approx(12.0e-3)


def test_display_latency_through_the_shared_state() -> None:
    from drivers.sim.state import BenchState

    state = BenchState.blank((2, 2), 1, 0.0)
    a, b = np.full((2, 2, 1), 1, np.uint8), np.full((2, 2, 1), 2, np.uint8)
    state.show(a, "a", late=False)
    state.show(b, "b", late=True)  # the panel still shows 'a' for one exposure
    assert state.expose()[1] == "a"
    assert state.expose()[1] == "b"


# ----------------------------------------------------------------------------- physical bench
def _physical(seed: int = 0, kernels: int = 4, **fab) -> SimulatedBench:
    """A small physical bench (seeded phase design, as-built optic), ideal display, identity
    registration, unit gain and (unless ``sensor`` is given) a noiseless sensor."""
    from drivers.sim.bench import NOMINAL_FOCUS_M
    from drivers.sim.physical import build_optic
    from onnlab.optics import FabricationErrors as PixelErrors
    from onnlab.optics.fabrication import FabricationErrors
    from onnlab.optics.seeded_design import design_kernel_psfs, design_phases, sim_optics

    sensor = fab.pop("sensor", NOISELESS)
    optics = sim_optics("mnist")
    phases = design_phases(optics, kernels, 32, seed)
    optic = build_optic(
        phases, optics, "SiO2", seed, FabricationErrors(**fab), nominal_focus_m=NOMINAL_FOCUS_M
    )
    return SimulatedBench(
        design_kernel_psfs(phases, optics, "SiO2"),
        (16, 16),
        optic=optic,
        errors=PixelErrors.identity(kernels, 1, 7),
        display=DisplayResponse(1.0, 0.0),
        registration=Registration(),
        sensor=sensor,
        seed=seed,
    )


def _point(y: int, x: int) -> torch.Tensor:
    img = torch.zeros(1, 1, 16, 16)
    img[0, 0, y, x] = 1.0
    return img


def test_physical_bench_renders_the_whole_window_and_leaks_into_the_gap() -> None:
    bench = _physical(zero_order_fraction=0.0)
    z = bench.stage.position_m
    frame = bench.expected_dn(_point(8, 8))[0] / NOISELESS.full_scale_e
    window = bench.truth.window_psfs_at(z)
    kernel = bench.truth.psfs_at(z)
    # every photon of every window lands on the sensor (noiseless, unit gain, no zero order)
    assert abs(float(frame.sum()) - float(window.sum())) < 1e-4 * float(window.sum())
    assert float(window.sum() - kernel.sum()) > 0.01 * float(window.sum())  # real leakage
    # a pixel on the right edge of tile 0's panel: some light lands in the gap column
    edge = bench.expected_dn(_point(8, 15))[0]
    lay = bench.truth.layout
    gap_x = lay.margin_px + 16  # first gap column right of tile 0
    assert float(edge[:, gap_x].sum()) > 1e-3 * float(edge.sum())


def test_physical_zero_order_is_a_background_proportional_to_its_fraction() -> None:
    s = {
        eta: _physical(zero_order_fraction=eta).expected_dn(_point(8, 8))[0]
        for eta in (0, 0.05, 0.1)
    }
    z05 = (s[0.05] - 0.95 * s[0]) / 0.05
    z10 = (s[0.1] - 0.9 * s[0]) / 0.1
    # float32 frames, differences amplified 20x: agreement to 0.2 %
    assert torch.allclose(z05, z10, rtol=2e-3, atol=2e-3 * float(z10.max()))
    # broad: it reaches the sensor's corners, far from every tile's focused light
    assert float(z10[0, 0]) > 1e-3 * float(z10.max())
    assert abs(float(s[0][0, 0])) < 1e-5 * float(s[0].max())


def test_physical_defocus_by_stage_spreads_light_out_of_the_kernel() -> None:
    """The stage moves the sensor plane: far from focus the blur square D |dz| / f (60 um =
    17 px at 300 um) is much wider than the 7 px kernel, on either side of focus."""
    bench = _physical(zero_order_fraction=0.0)
    best = bench.truth.focus.z_focus_m
    inner = {dz: float(bench.truth.psfs_at(best + dz).sum()) for dz in (-300e-6, 0.0, 300e-6)}
    assert inner[0.0] > 2 * inner[300e-6] and inner[0.0] > 2 * inner[-300e-6]


def test_physical_frames_are_a_pure_function_of_what_is_shown() -> None:
    """Noise on: the same images give the same frames in any order, on a fresh bench of the
    same seed (a repeat of a pattern on the same bench is a new exposure, new noise)."""
    imgs = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    a = [f.pixels for f in _physical(sensor=SensorModel()).render(imgs, [0, 1, 2])]
    flipped = _physical(sensor=SensorModel()).render(imgs.flip(0), [2, 1, 0])
    for x, y in zip(a, [f.pixels for f in flipped][::-1], strict=True):
        np.testing.assert_array_equal(x, y)
    other = _physical(seed=1, sensor=SensorModel())
    assert not np.array_equal(other.render(imgs[:1], [0])[0].pixels, a[0])


def test_physical_bench_from_the_config_shares_only_its_design_with_calibration() -> None:
    """sim.model physical: calibration reads the same design (layer 1), never the as-built."""
    from calibration.setup import config_design_psfs
    from drivers.registry import default_config_path, load_bench_config, open_devices

    cfg = load_bench_config(default_config_path())
    cfg = cfg.model_copy(update={"sim": cfg.sim.model_copy(update={"model": "physical"})})
    with open_devices(cfg) as devices:
        truth = devices.sim_bench.truth
        design = config_design_psfs(cfg)
        assert torch.equal(design, truth.design_psfs)
        assert truth.optic is not None
        assert float((truth.psfs - design).norm() / design.norm()) > 0.05  # fabricated
