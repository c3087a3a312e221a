"""`SimulatedBench`: an as-built hybrid-ONN bench (SLM -> meta-optic -> camera, focus stage).

The bench draws hidden as-built deviations from a seed (or takes them from the caller), exposes
`slm`, `camera` and `stage` twins that implement `drivers.protocols` exactly like the real
drivers, and keeps the hidden values in `truth` for tests and benchmarks only (calibration must
never read it). The rendering model (formulas, units) is documented in `drivers.sim.model`.

Two ways to get frames, one model and one noise rule:

* per frame: ``slm.show(img, pattern_id=i); frame = camera.capture()`` -- with transport
  faults (`FaultConfig`) and honest ``Frame.pattern_id`` under display latency;
* batched: ``bench.render(images) -> list[Frame]`` -- the same rendering and the same
  per-frame noise for thousands of frames per second, no transport faults.

Sensor noise is a pure function of (seed, pattern id, displayed grey levels, exposure, stage
position, repeat count) -- `drivers.sim.noise` -- so a capture interrupted and resumed by a
new process yields exactly the frames of an uninterrupted one, noise included.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from drivers.protocols import Frame, PatternId
from drivers.sim.design import tile_grid
from drivers.sim.devices import SimCamera, SimSLM, SimStage
from drivers.sim.faults import FaultConfig, FaultInjector
from drivers.sim.model import (
    DisplayResponse,
    Focus,
    Registration,
    Renderer,
    SimTruth,
    TileLayout,
)
from drivers.sim.noise import FrameNoise
from drivers.sim.physical import PhysicalOptic, PhysicalRenderer
from drivers.sim.state import BenchState
from onnlab.optics import FabricationErrors, SensorModel, perturb_psfs

STAGE_LIMITS_M = (0.0, 25e-3)  # a 25 mm travel actuator (SMC100-class); home at 0
NOMINAL_FOCUS_M = 12.5e-3  # where the design puts focus; the as-built focus differs


def _check_optic(optic: PhysicalOptic, psfs: torch.Tensor) -> None:
    k, c, kp = int(psfs.shape[0]), int(psfs.shape[1]), int(psfs.shape[2])
    if (optic.as_built.n_kernels, optic.optics.in_channels, optic.kernel_px) != (k, c, kp):
        raise ValueError(
            f"optic: K={optic.as_built.n_kernels}, C={optic.optics.in_channels}, "
            f"kernel_px={optic.kernel_px} does not match design_psfs {tuple(psfs.shape)}"
        )


class SimulatedBench:
    """A seeded, fault-injectable twin of the whole bench.

    Args:
        design_psfs: (K, C, k, k) designed PSFs (non-negative, per-kernel energy <= 1).
        image_hw: SLM panel = camera tile size (H, W).
        errors: fabrication errors (gain alpha, display misalignment, PSF delta); None draws
            `FabricationErrors.sample(K, C, k, seed, strength=error_strength)`.
        sensor: camera model (default `SensorModel()`).
        rows, cols, gap_px: tile grid on the sensor (default: most square grid, 4 px gaps).
        margin_px: dark border around the tiles so registration never pushes light off-sensor.
        seed: one seed for every hidden value and the per-frame noise.
        faults: transport faults to inject (default: none).
        display, registration, focus: override the drawn hidden values (e.g. ideal ones).
        error_strength: scale of the drawn fabrication errors and hidden deviations (0: ideal).
        exposure_s: initial camera exposure; 1 s reproduces `SensorModel`'s photometry
            (``full_scale_e`` electrons per unit feature) used at training time.
        stage_z_m: initial stage position (default: the nominal focus).
        optic: the as-built optic of a PHYSICAL bench (`drivers.sim.physical`): frames are
            rendered through its effective PSFs (leakage, zero order, defocus by propagation)
            and ``errors`` only supplies the per-kernel gain (no display misalignment, no
            per-pixel PSF noise). None: the legacy bench of `drivers.sim.model`.
    """

    def __init__(
        self,
        design_psfs: torch.Tensor,
        image_hw: Sequence[int],
        *,
        errors: FabricationErrors | None = None,
        sensor: SensorModel | None = None,
        rows: int | None = None,
        cols: int | None = None,
        gap_px: int = 4,
        margin_px: int = 6,
        seed: int = 0,
        faults: FaultConfig | None = None,
        display: DisplayResponse | None = None,
        registration: Registration | None = None,
        focus: Focus | None = None,
        error_strength: float = 1.0,
        exposure_s: float = 1.0,
        stage_z_m: float = NOMINAL_FOCUS_M,
        device_ids: tuple[str, str, str] = ("slm0", "cam0", "stage0"),
        optic: PhysicalOptic | None = None,
    ) -> None:
        psfs = torch.as_tensor(design_psfs)
        if psfs.ndim != 4 or psfs.shape[2] != psfs.shape[3]:
            raise ValueError(f"design_psfs: expected (K, C, k, k), got {tuple(psfs.shape)}")
        if not psfs.is_floating_point() or bool((psfs < 0).any()):
            raise ValueError("design_psfs: expected non-negative floating-point PSFs")
        n_k, n_c, k_px = int(psfs.shape[0]), int(psfs.shape[1]), int(psfs.shape[2])
        if n_c not in (1, 3):
            raise ValueError(f"design_psfs: expected C = 1 (mono) or 3 (RGB), got {n_c}")
        if len(image_hw) != 2 or min(image_hw) < 1:
            raise ValueError(f"image_hw: expected (H, W) positive, got {image_hw!r}")
        rows, cols = tile_grid(n_k, rows, cols)
        if margin_px < 0 or gap_px < 0:
            raise ValueError("margin_px and gap_px: expected >= 0")

        self.seed = int(seed)
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.channels = n_c
        rng = np.random.default_rng([self.seed, 0xB5E7])
        s = float(error_strength)
        if errors is None:
            errors = FabricationErrors.sample(n_k, n_c, k_px, seed=self.seed, strength=s)
        if optic is not None:
            _check_optic(optic, psfs)
            # The optic carries the PSF errors and its own offset/rotation: keep the gain only.
            errors = FabricationErrors(
                gain=torch.as_tensor(errors.gain, dtype=psfs.dtype),
                psf_delta=torch.zeros_like(psfs),
                meta={**errors.meta, "model": "physical"},
            )
        layout = TileLayout(int(rows), int(cols), int(gap_px), self.image_hw, int(margin_px))
        hs, ws = layout.sensor_hw
        if display is None:
            display = DisplayResponse(
                gamma=2.2 + s * 0.15 * float(rng.standard_normal()),
                black_level=s * float(rng.uniform(0.005, 0.03)),
            )
        if registration is None:
            registration = Registration(
                offset_px=(s * float(rng.normal(0, 1.5)), s * float(rng.normal(0, 1.5))),
                rotation_rad=s * float(rng.normal(0, 0.004)),
                scale=1.0 + s * float(rng.normal(0, 0.004)),
            )
        registration = Registration(
            registration.offset_px,
            registration.rotation_rad,
            registration.scale,
            centre_px=((hs - 1) / 2, (ws - 1) / 2),
        )
        if optic is not None:
            focus = Focus(z_focus_m=optic.best_focus_m, max_sigma_px=2.0 * k_px)
        if focus is None:
            focus = Focus(
                z_focus_m=NOMINAL_FOCUS_M + s * float(rng.normal(0, 30e-6)),
                max_sigma_px=2.0 * k_px,
            )
        self.truth = SimTruth(
            design_psfs=psfs,
            psfs=(
                perturb_psfs(psfs, errors.psf_delta)
                if optic is None
                else optic.kernel_psfs(optic.best_focus_m)
            ),
            gain=torch.as_tensor(errors.gain, dtype=psfs.dtype),
            errors=errors,
            display=display,
            registration=registration,
            focus=focus,
            sensor=sensor if sensor is not None else SensorModel(),
            layout=layout,
            extra={"seed": self.seed, "error_strength": s}
            | ({} if optic is None else {"model": "physical", "as_built": optic.record}),
            optic=optic,
        )
        self.renderer = (
            Renderer(self.truth) if optic is None else PhysicalRenderer(self.truth, optic)
        )
        self.noise = FrameNoise(self.seed)
        self.fault_config = faults if faults is not None else FaultConfig()
        self.faults = FaultInjector(self.fault_config, self.seed)
        self.fault_rng = np.random.default_rng([self.seed, 0xFA])
        slm_id, cam_id, stage_id = device_ids
        self.state = BenchState.blank(self.image_hw, self.channels, stage_z_m)
        self.slm = SimSLM(slm_id, self)
        self.stage = SimStage(stage_id, self, STAGE_LIMITS_M)
        self.camera = SimCamera(cam_id, self, exposure_s=exposure_s)
        for dev in (self.slm, self.stage, self.camera):
            dev.open()

    # ------------------------------------------------------------------ convenience
    @property
    def devices(self) -> dict[str, SimSLM | SimCamera | SimStage]:
        return {d.device_id: d for d in (self.slm, self.camera, self.stage)}

    @property
    def sensor_hw(self) -> tuple[int, int]:
        return self.truth.layout.sensor_hw

    def _grey(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, C, H, W) float [0, 1] or integer grey levels -> uint8 grey levels (SLM rule)."""
        x = torch.as_tensor(images)
        want = (self.channels, *self.image_hw)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"images: expected (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(x.shape)}"
            )
        if x.is_floating_point():
            if bool(((x < 0) | (x > 1) | ~torch.isfinite(x)).any()):
                raise ValueError("images: float images must lie in [0, 1]")
            return torch.round(x * 255).to(torch.uint8)
        if bool(((x < 0) | (x > 255)).any()):
            raise ValueError("images: integer grey levels must lie in [0, 255]")
        return x.to(torch.uint8)

    def render(
        self,
        images: torch.Tensor | np.ndarray,
        pattern_ids: Sequence[PatternId | None] | None = None,
        *,
        chunk: int = 64,
    ) -> list[Frame]:
        """Frames for a batch of images as if each had been shown and captured.

        Same display quantisation, optics, registration, per-frame noise, exposure and stage
        position as ``slm.show`` + ``camera.capture``; no transport faults, no display latency.
        Frame ids continue the camera's counter. The camera must be usable (open).
        """
        grey = self._grey(images)
        ids = list(pattern_ids) if pattern_ids is not None else [None] * grey.shape[0]
        if len(ids) != grey.shape[0]:
            raise ValueError(f"pattern_ids: expected {grey.shape[0]} ids, got {len(ids)}")
        frames: list[Frame] = []
        for i in range(0, grey.shape[0], chunk):
            part = grey[i : i + chunk]
            frames += self.camera._call(
                "render",
                self.camera._render_batch,
                part,
                ids[i : i + chunk],
                timeout_s=600.0,
                pass_timeout=False,
            )
        return frames

    def expected_dn(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Noise-free mean DN (B, Hs, Ws) at the current exposure and stage position (truth)."""
        return self.renderer.expected_dn(
            self._grey(images), self.state.stage_z_m, self.camera.exposure_s
        )

    def close(self) -> None:
        for dev in (self.slm, self.camera, self.stage):
            dev.close()

    def __enter__(self) -> SimulatedBench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        k, c, kp, _ = self.truth.psfs.shape
        lay = self.truth.layout
        return (
            f"<SimulatedBench K={k} C={c} k={kp} image_hw={self.image_hw} "
            f"tiles={lay.rows}x{lay.cols} sensor_hw={lay.sensor_hw} seed={self.seed}>"
        )
