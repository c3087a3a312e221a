"""The phase-mask frontend: trainable design phases -> PSFs through the wave model, every step.

What it models: a meta-optic (a thin phase element of a given material) made of K square
sub-apertures of side ``optics.kernel_size_m`` laid out on the aperture by the paper's Eq. 1
(`kernel_layout`), each focusing the displayed image onto its own sensor tile. Kernel k's PSF is
``psfs_from_phases``: the Fraunhofer transform of sub-aperture k's pupil, evaluated at the
sensor's sub-pixels, integrated over each pixel, with dispersion (phase at lambda =
phi0 lambda0 / lambda (n(lambda) - 1) / (n(lambda0) - 1) for the material's Cauchy index, and
the lambda f scale of the focal plane) for every wavelength of the OpticsConfig.

Why K sub-apertures (and not one shared aperture whose PSF holds K shifted kernels):
* it is what Eq. 1 counts: kernels of side k with spacing d tiled on the aperture, each its own
  lens; the count, the layout and the simulated bench's tiles (`tile_onto_sensor`) all assume it;
* each kernel receives all the light of its own sub-aperture and its own N x N degrees of
  freedom; a shared pupil splits one field into K spots, so every kernel gets ~1/K of the
  light, the kernels are coupled (changing one moves the others) and the zero order and
  cross-talk between tiles are unavoidable;
* the tile offset of a shared-aperture design (image + gap, ~100 um at 3.45 um pixels) needs
  deflection angles that a coarse N x N design grid cannot sample, while a sub-aperture's
  kernel sits on its own axis: the window is a few lambda F wide, which a 64 x 64 grid samples
  with the focal-plane period lambda f / pitch 4.8-7x larger than the window.

Light bookkeeping: each PSF sums to the fraction of the light incident on its sub-aperture
that lands inside its kernel window (averaged over the colour channels, weight 1/C each), times
`max_transmission` (the element's own power transmittance, 1 by default). Light diffracted
outside the window is lost from the features (physically it lands on the dark gap or a
neighbouring tile; cross-talk is not modelled) and is reported by `efficiency()`; nothing is
renormalised.

Initialisation: a random smooth phase per kernel (a low-pass Gaussian random field with
~`init_cycles` = 1 undulation across the sub-aperture, i.e. a random mix of low-order
aberrations) scaled so that the local ray deflection (lambda0 f / 2 pi) |grad phi| has an RMS
of a quarter of the window side. Each kernel then starts as a distinct, irregular spot pattern
with pixel-scale structure (the lambda F diffraction limit) spread over its window, like the
free frontend's random softmax start, with ~93 % of the light inside the window (MNIST system).
Why these numbers: the phase RMS comes out ~1.7 rad, so the undiffracted part that would
form a plain Airy spot keeps only exp(-1.7^2) ~ 5 % of the light; more undulations at the same
deflection mean a smaller phase RMS and a dominant central spot (4 undulations: 0.56 rad, 73 %
in the Airy core). A flat phase would start all K kernels as the same Airy spot (K copies of
one feature); an uncorrelated random phase scatters light over the whole focal-plane period
lambda f / pitch, ~50x the window area, so only ~2 % of it would reach the features.

Dilated supports (the segmentation system's 3x3 taps at dilations 1/2/4): a phase mask cannot
force exactly zero light between taps, so this frontend has no support mask; every kernel may
use its whole kernel_px x kernel_px window (the student's stack, 9 x 9 for segmentation). The
tap structure is a constraint of the free frontend only.

Sampling: the constructor runs the Fraunhofer checks of `onnlab.optics.grid` for every
wavelength (phase pitch > lambda / 2; focal-plane period lambda f / pitch covers the window)
and names `phase_samples` when N is too small. The model treats the N x N phase samples as
point samples; a piecewise-constant fabricated mask adds a sinc envelope of the pixel, which at
the window edge is >= 0.96 in power for the default systems (window <= 1/4.8 of the period).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from onnlab.models.frontend import OpticalFrontend, checked_psfs
from onnlab.optics.grid import Grid, check_fraunhofer
from onnlab.optics.layout import OpticsConfig, kernel_layout
from onnlab.optics.materials import Material, get_material
from onnlab.optics.psf import psfs_from_phases
from onnlab.optics.psf_jacobian import psf_phase_jacobian
from onnlab.optics.psf_phase_gram import psf_phase_kernel_gram

# Physical systems of the phase frontend per task, as OpticsConfig overrides of
# `OpticsConfig.preset(task)` (aperture, kernel count, wavelengths come from the preset). The
# experiment configs (configs/experiments/<task>.yaml, student.architecture.optics) repeat these
# numbers with their justification; tests keep the two in step.
#
# * sensor_pitch_m 3.45 um: Sony IMX250/IMX264 machine-vision sensors.
# * kernel_size_m 0.5 mm sub-apertures, focal_length_m 2.5 mm: F/5. The incoherent PSF is band
#   limited to D / (lambda f) = 1 / (lambda F#): 317 cycles/mm at 630 nm, 376 at 532 nm, above
#   the sensor's Nyquist 1 / (2 p) = 145 cycles/mm, so a 7x7 kernel can hold pixel-scale detail
#   (at F/20, the preset's f = 10 mm, the cutoff 79-100 cycles/mm is below Nyquist and free
#   PSFs with pixel-scale detail could not be realised).
# * kernel_px: the student's PSF stack (segmentation: 3x3 taps at dilation 4 span 9 px).
_OPTICS: dict[str, dict[str, Any]] = {
    "mnist": dict(kernel_size_m=0.5e-3, spacing_m=0.1e-3, focal_length_m=2.5e-3),
    "cifar10": dict(kernel_size_m=0.5e-3, spacing_m=0.1e-3, focal_length_m=2.5e-3),
    "segmentation": dict(
        kernel_size_m=0.5e-3, spacing_m=0.1e-3, focal_length_m=2.5e-3, kernel_px=9
    ),
}
_COMMON = dict(sensor_pitch_m=3.45e-6, aperture_shape="square")
# Phase samples N across a sub-aperture and the material, per task (see the experiment configs).
PHASE_SAMPLES: dict[str, int] = {"mnist": 64, "cifar10": 64, "segmentation": 64}
MATERIAL: dict[str, str] = {"mnist": "SiO2", "cifar10": "SiO2", "segmentation": "SiO2"}
# Sub-pixels per sensor pixel and axis for the pixel integration. The PSF intensity is band
# limited to D / (lambda f), up to 1.6 cycles per 3.45 um pixel at 465 nm: a midpoint rule with
# m sub-pixels integrates that component with error |sinc(1.6) - Dirichlet_m(1.6)|, ~4 % of the
# peak for m = 3 (measured on the Airy pattern), <= 1 % for m = 7, at ~1.3x the cost of m = 3.
OVERSAMPLE = 7


def default_optics(task: str, n_kernels: int | None = None, **overrides: Any) -> OpticsConfig:
    """The physical optical system of `task` for wave-model frontends (SI units).

    `OpticsConfig.preset(task)` (aperture, wavelengths, kernel count via Eq. 1) with the
    sub-aperture, focal length and sensor pitch chosen so that the PSF's band limit supports
    pixel-scale kernels (see `_OPTICS`); `overrides` replace any OpticsConfig field. With
    `n_kernels` larger than the aperture holds (e.g. pseudo-negative pairs double K) and no
    `aperture_hw_m` override, the aperture is widened by whole columns until Eq. 1 fits K.
    """
    if task not in _OPTICS:
        raise ValueError(f"task must be one of {sorted(_OPTICS)}, got {task!r}")
    config = OpticsConfig.preset(task, **{**_COMMON, **_OPTICS[task], **overrides})
    if n_kernels is not None and "aperture_hw_m" not in overrides:
        lay = config.layout()
        if n_kernels > lay.count:
            cols = math.ceil(n_kernels / lay.rows)
            width = cols * lay.pitch_m - config.spacing_m
            config = config.model_copy(update={"aperture_hw_m": (config.aperture_hw_m[0], width)})
            config = OpticsConfig(**config.model_dump())  # re-validate
    return config


@dataclass(frozen=True)
class PhaseSystem:
    """Everything a wave-model frontend needs besides its phases: optics, material, N."""

    optics: OpticsConfig
    material: Material
    phase_samples: int
    oversample: int = OVERSAMPLE


def check_sampling(optics: OpticsConfig, phase_samples: int) -> None:
    """ValueError naming `phase_samples` unless N samples per sub-aperture pass the Fraunhofer
    sampling checks of `onnlab.optics.grid` for every wavelength of `optics`."""
    n = int(phase_samples)
    if n != phase_samples or n < 2:
        raise ValueError(f"phase_samples must be an integer >= 2, got {phase_samples!r}")
    grid = Grid.covering(optics.kernel_size_m, n)
    for lam in optics.wavelengths_m:
        try:
            check_fraunhofer(grid, lam, optics.focal_length_m, out_extent_m=optics.kernel_extent_m)
        except ValueError as exc:
            raise ValueError(
                f"phase_samples={n} is invalid for wavelength_m={lam:g} "
                f"(kernel_size_m={optics.kernel_size_m:g}, focal_length_m="
                f"{optics.focal_length_m:g}): {exc}"
            ) from exc


class PhaseMaskFrontend(nn.Module):
    """K trainable phase maps (N x N, radians at the design wavelength) -> K incoherent PSFs.

    Same interface as `OpticalFrontend` (`psfs`, `forward`, `n_features`, `transmission`,
    `load_psfs`, pseudo-negative pairs (k, k + K/2)), plus `design_phases`, `efficiency`,
    `optics` and `material`.

    Args:
        n_kernels: K physical sub-apertures (even when `pseudo_negative`); K <= Eq. 1's count.
        optics: the physical system; C = len(optics.wavelengths_m), kernel_px = optics.kernel_px.
        material: a `Material` or its name (`onnlab.optics.materials.MATERIALS`).
        phase_samples: N, phase samples across a sub-aperture side.
        pseudo_negative: pair PSFs and subtract them digitally (returns K/2 features).
        method: convolution path passed to `optical_conv2d` ("auto", "direct", "fft").
        max_transmission: the element's power transmittance (<= 1), multiplies every PSF.
        oversample: sub-pixels per sensor pixel and axis for the pixel integration.
        init_cycles: undulations of the random initial phase across a sub-aperture.
    """

    def __init__(
        self,
        n_kernels: int,
        optics: OpticsConfig,
        material: Material | str = "SiO2",
        phase_samples: int = 64,
        pseudo_negative: bool = False,
        method: str = "auto",
        *,
        max_transmission: float = 1.0,
        oversample: int = OVERSAMPLE,
        init_cycles: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(optics, OpticsConfig):
            raise ValueError(f"optics must be an OpticsConfig, got {type(optics).__name__}")
        if n_kernels < 1:
            raise ValueError(f"n_kernels must be >= 1, got {n_kernels}")
        if pseudo_negative and n_kernels % 2:
            raise ValueError(f"pseudo_negative needs an even n_kernels, got {n_kernels}")
        fits = kernel_layout(optics).count
        if n_kernels > fits:
            raise ValueError(
                f"aperture_hw_m={optics.aperture_hw_m} holds {fits} sub-apertures of "
                f"kernel_size_m={optics.kernel_size_m:g} (Eq. 1), fewer than n_kernels={n_kernels}"
            )
        if not 0.0 < max_transmission <= 1.0:
            raise ValueError(f"max_transmission must be in (0, 1], got {max_transmission}")
        if method not in ("auto", "direct", "fft"):
            raise ValueError(f"method must be 'auto', 'direct' or 'fft', got {method!r}")
        if int(oversample) < 1:
            raise ValueError(f"oversample must be >= 1, got {oversample!r}")
        if not (math.isfinite(init_cycles) and init_cycles > 0):
            raise ValueError(f"init_cycles must be positive, got {init_cycles!r}")
        self.material = get_material(material)
        self.material.check_wavelengths((*optics.wavelengths_m, optics.reference_wavelength_m))
        check_sampling(optics, phase_samples)
        self.optics = optics
        self.phase_samples = int(phase_samples)
        self.n_kernels, self.in_channels = n_kernels, optics.in_channels
        self.kernel_px = optics.kernel_px
        self.pseudo_negative, self.method = pseudo_negative, method
        self.max_transmission, self.oversample = float(max_transmission), int(oversample)
        self.phase = nn.Parameter(self._initial_phase(init_cycles))
        shape = (n_kernels, self.in_channels, self.kernel_px, self.kernel_px)
        self.register_buffer("measured", torch.zeros(shape))
        self.register_buffer("measured_active", torch.tensor(False))

    # Kernel k's PSF is a function of phase[k] alone (its own sub-aperture): the exact NTK Gram
    # takes the PSF Jacobian kernel by kernel (`kernel_jacobians`, `onnlab.distill.lifted`).
    independent_kernels = True

    # Same feature semantics as the free frontend: one definition of `forward`/`n_features`.
    n_features = OpticalFrontend.n_features
    forward = OpticalFrontend.forward

    def _initial_phase(self, cycles: float) -> torch.Tensor:
        """Smooth random phases whose RMS ray deflection is a quarter of the window side."""
        n, k = self.phase_samples, self.n_kernels
        noise = torch.randn(k, n, n, dtype=torch.float64)
        f = torch.fft.fftfreq(n, dtype=torch.float64) * n  # cycles per sub-aperture
        gauss = torch.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * cycles**2))
        field = torch.fft.ifft2(torch.fft.fft2(noise) * gauss).real
        pitch = self.optics.kernel_size_m / n
        gy = (field.roll(-1, 1) - field.roll(1, 1)) / (2 * pitch)
        gx = (field.roll(-1, 2) - field.roll(1, 2)) / (2 * pitch)
        rms_grad = (gy**2 + gx**2).mean(dim=(1, 2)).sqrt()  # rad/m per unit field
        lam0, f_m = self.optics.reference_wavelength_m, self.optics.focal_length_m
        target = self.optics.kernel_extent_m / 4  # RMS deflection on the sensor, metres
        scale = target * 2 * math.pi / (lam0 * f_m) / rms_grad
        return (field * scale[:, None, None]).to(torch.get_default_dtype())

    def design_phases(self) -> torch.Tensor:
        """(K, N, N) design phases in radians at the design wavelength, wrapped to [0, 2 pi)."""
        return torch.remainder(self.phase.detach(), 2 * math.pi)

    @torch.no_grad()
    def set_phases(self, phases: torch.Tensor) -> None:
        """Replace the design phases (K, N, N), e.g. by realised ones; measured PSFs drop."""
        phases = torch.as_tensor(phases)
        if tuple(phases.shape) != tuple(self.phase.shape) or not torch.isfinite(phases).all():
            raise ValueError(f"phases must be finite with shape {tuple(self.phase.shape)}")
        self.phase.copy_(phases.to(self.phase))
        self.measured_active.fill_(False)

    def _wave_psfs(self) -> torch.Tensor:
        psfs = psfs_from_phases(
            self.phase,
            self.optics,
            oversample=self.oversample,
            refractive_index=self.material.refractive_index,
            check=False,  # checked once in __init__; the optics are immutable
        )
        return psfs * self.max_transmission if self.max_transmission != 1.0 else psfs

    def kernel_jacobians(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"phase": (K, C, k, k, N N)}: d psfs()[k] / d phase[k], in closed form.

        ``params`` holds the phase to evaluate at (the NTK engine passes its own differentiable
        copy). Why: the exact NTK Gram needs these Jacobians every step; the closed form
        (`onnlab.optics.psf_jacobian`) costs about one wave-model pass instead of C k k.
        """
        phase = params["phase"]
        jac = psf_phase_jacobian(
            phase,
            self.optics,
            oversample=self.oversample,
            refractive_index=self.material.refractive_index,
        )
        jac = jac * self.max_transmission if self.max_transmission != 1.0 else jac
        return {"phase": jac.flatten(-2)}

    @property
    def psf_shape(self) -> tuple[int, int, int, int]:
        """(K, C, k, k): the shape of `psfs`."""
        return (self.n_kernels, self.in_channels, self.kernel_px, self.kernel_px)

    def kernel_grams(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """(K, D, D) per-kernel phase NTK of the PSFs, J_k J_k^T (D = C k k), once
        differentiable in ``params["phase"]``.

        Why besides `kernel_jacobians`: the NTK engine only needs this product, and its
        gradient has a closed form (`onnlab.optics.psf_phase_gram`) that skips autograd's walk
        back through the (K, C, k, k, N, N) Jacobian.
        """
        if set(params) != {"phase"}:
            raise ValueError(f"kernel_grams takes exactly the phase, got {sorted(params)}")
        gram = psf_phase_kernel_gram(
            params["phase"],
            self.optics,
            oversample=self.oversample,
            refractive_index=self.material.refractive_index,
        )
        return gram * self.max_transmission**2 if self.max_transmission != 1.0 else gram

    def psfs(self) -> torch.Tensor:
        """(K, C, k, k) PSFs: non-negative, each summing to its efficiency (<= 1)."""
        if bool(self.measured_active):
            return self.measured
        return self._wave_psfs()

    def efficiency(self) -> torch.Tensor:
        """(K,) power in each kernel's window / power incident on its sub-aperture (colour
        average); the rest is diffracted outside the window and lost from the features."""
        return self.psfs().sum(dim=(1, 2, 3))

    def transmission(self) -> torch.Tensor:
        """(K,) energy fraction of each PSF (the efficiency; <= max_transmission <= 1)."""
        return self.efficiency()

    @torch.no_grad()
    def load_psfs(self, psfs: torch.Tensor, *, trainable: bool = False, tol: float = 1e-4) -> None:
        """Use measured PSFs (K, C, k, k) instead of the design, kept exactly and frozen.

        A phase frontend cannot re-express arbitrary PSFs as phases by a reparameterisation
        (that is a phase-retrieval problem: `onnlab design realise`), so `trainable=True` is
        refused rather than silently approximated.
        """
        if trainable:
            raise ValueError(
                "trainable=True is not possible for a phase-mask frontend: realise the PSFs "
                "as phases (onnlab design realise) and use set_phases"
            )
        psfs = checked_psfs(psfs, self, self.measured, tol)
        self.measured.copy_(psfs)
        self.measured_active.fill_(True)
        self.phase.requires_grad_(False)

    def extra_repr(self) -> str:
        o = self.optics
        return (
            f"n_kernels={self.n_kernels}, in_channels={self.in_channels}, "
            f"kernel_px={self.kernel_px}, phase_samples={self.phase_samples}, "
            f"material={self.material.name}, kernel_size_m={o.kernel_size_m:g}, "
            f"focal_length_m={o.focal_length_m:g}, pseudo_negative={self.pseudo_negative}"
        )
