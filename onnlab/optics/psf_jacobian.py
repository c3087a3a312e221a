"""Exact Jacobian of the sub-aperture PSFs with respect to their design phases, in closed form.

Why: the exact NTK of a phase-mask student needs, per kernel, the Jacobian J_k of its PSF
(C x kh x kw values) w.r.t. its N x N phase samples. Autograd gets it from one reverse pass
through the wave model per PSF value (C kh kw passes, each over all K pupils at the
oversampled window); the closed form below costs about one forward pass in all. For the
CIFAR-10 system (16 kernels, 3 colours, 7 x 7 window, 7 x 7 sub-pixels, N = 64) that is the
difference between ~4.5 s and ~0.5 s per NTK Gram (16 images) and its backward on one CPU
thread. With fewer gradient rows than PSF values per kernel (segmentation: 4 directions x 8
images against 243 values) pulling the rows back through the wave model stays cheaper, and the
NTK engine does that instead (`onnlab.distill.lifted`).

Model (`onnlab.optics.psf.psf_from_phase`): for colour c the pupil p_n = a_n exp(i s_c phi_n)
(s_c the dispersion factor, phi wrapped to [0, 2 pi): derivative 1), the field at sub-pixel t
E_t = sum_n F_tn p_n with the separable matrix Fourier operator F = factor * (ay kron ax), and
pixel u collects I_u = kappa_c sum_{t in u} |E_t|^2 (kappa_c = the colour's share times the
sub-pixel area over the incident power). Hence

    dI_u / dphi_n = 2 kappa_c s_c Re(i p_n H_un) = -2 kappa_c s_c Im(p_n H_un),
    H_un = sum_{t in u} conj(E_t) F_tn,

and H is two small contractions with ay and ax per pixel. Everything is a torch expression of
the phases, so the Jacobian can itself be differentiated (the NTK loss needs that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from onnlab.optics.grid import Grid
from onnlab.optics.propagation import fraunhofer_matrices
from onnlab.optics.psf import (
    RefractiveIndex,
    aperture_mask,
    dispersed_phase,
    dispersion_factor,
    sensor_subpixels,
)

if TYPE_CHECKING:
    from onnlab.optics.layout import OpticsConfig


@dataclass(frozen=True)
class ColourTerms:
    """One colour's pieces of the closed form: pupil p (K, N, N), the separable Fourier kernels
    with the constant folded into ``ay`` (F_tn = ay[ty, i] ax[tx, j]), the factor
    beta = -2 kappa_c s_c of the Jacobian and the dispersion factor s_c."""

    pupil: torch.Tensor
    ay: torch.Tensor
    ax: torch.Tensor
    beta: float
    scale: float


def colour_terms(
    phases: torch.Tensor,
    config: OpticsConfig,
    oversample: int,
    refractive_index: RefractiveIndex | None,
) -> list[ColourTerms]:
    """Per colour, what `psf_phase_jacobian` and `psf_phase_kernel_gram` contract with."""
    if not isinstance(phases, torch.Tensor) or phases.ndim != 3:
        raise ValueError("phases must be a (K, N, N) tensor of radians")
    ny, nx = phases.shape[1:]
    grid = Grid.covering(config.kernel_size_m, (ny, nx))
    amplitude = aperture_mask(
        grid, config.aperture_shape, config.kernel_size_m, phases.dtype, phases.device
    )
    kh = kw = config.kernel_px
    out_grid, offset = sensor_subpixels(kh, kw, config.sensor_pitch_m, int(oversample))
    incident = float((amplitude > 0).sum()) * grid.area_element_m2
    lams = list(config.wavelengths_m)
    lam0 = config.reference_wavelength_m
    kappa = out_grid.area_element_m2 / incident / len(lams)
    terms = []
    for lam in lams:
        phi = dispersed_phase(phases, lam0, lam, refractive_index=refractive_index)
        scale = dispersion_factor(lam0, lam, refractive_index)
        pupil = torch.polar(amplitude.expand_as(phi), phi)
        ay, ax, factor = fraunhofer_matrices(
            grid, lam, config.focal_length_m, out_grid, offset, pupil.dtype, pupil.device
        )
        # the constant rides on the small operands, not on (K, kh, kw, N, N)
        terms.append(ColourTerms(pupil, ay * factor, ax, -2.0 * kappa * scale, scale))
    return terms


def h_matrix(term: ColourTerms, kh: int, kw: int) -> torch.Tensor:
    """H_un = sum_{t in u} conj(E_t) F_tn, (K, kh, kw, N, N)."""
    pupil, ay, ax = term.pupil, term.ay, term.ax
    k, ny, nx = pupil.shape
    m = ay.shape[0] // kh
    field = ay @ pupil @ ax.transpose(0, 1)  # (K, kh m, kw m)
    conj = field.conj().reshape(k, kh, m, kw, m)
    half = torch.einsum("kyaxb,xbj->kyaxj", conj, ax.reshape(kw, m, nx))
    return torch.einsum("yai,kyaxj->kyxij", ay.reshape(kh, m, ny), half)


def colour_jacobian(term: ColourTerms, h: torch.Tensor) -> torch.Tensor:
    """(K, kh, kw, N, N) one colour's dI_u/dphi_n = beta Im(p_n H_un), from ``h_matrix``."""
    return ((term.pupil * term.beta)[:, None, None] * h).imag


def psf_phase_jacobian(
    phases: torch.Tensor,
    config: OpticsConfig,
    *,
    oversample: int = 3,
    refractive_index: RefractiveIndex | None = None,
) -> torch.Tensor:
    """(K, C, kh, kw, N, N): d psfs_from_phases(phases)[k] / d phases[k], kernel by kernel.

    Kernel k's PSF depends on phases[k] only (its own sub-aperture), so this is the whole
    Jacobian; same arguments and conventions as `onnlab.optics.psf.psfs_from_phases`.
    """
    kh = kw = config.kernel_px
    per_colour = [
        colour_jacobian(t, h_matrix(t, kh, kw))
        for t in colour_terms(phases, config, oversample, refractive_index)
    ]
    return torch.stack(per_colour, dim=1)
