"""Random and spectral sampling for the fabrication model: correlated height noise, source spectra.

Kept apart from `fabrication.py` because both are reusable statistics with their own checks:
a Gaussian-correlated random field (the standard model of slowly varying etch / resist-height
errors) and a quadrature of a source's emission spectrum per colour channel.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))  # 2.3548: Gaussian FWHM / standard deviation


def correlated_noise(
    shape: tuple[int, int, int],
    pitch_m: float,
    rms: float,
    correlation_m: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """B independent Gaussian random fields (B, N, N), float64, with covariance
    rms^2 exp(-rho^2 / correlation_m^2) (rho: distance; correlation_m: the 1/e length).

    Drawn by filtering white noise in Fourier space with sqrt of the power spectral density
    pi l^2 exp(-pi^2 l^2 |nu|^2), on a grid twice as large as the field (the FFT's periodicity
    would otherwise correlate opposite edges) and normalised so that the expected variance is
    exactly rms^2 (the sample variance of one draw fluctuates, as a real wafer's does).
    """
    b, ny, nx = (int(v) for v in shape)
    if not (math.isfinite(rms) and rms >= 0):
        raise ValueError(f"rms must be >= 0, got {rms!r}")
    if not (math.isfinite(correlation_m) and correlation_m > 0):
        raise ValueError(f"correlation_m must be positive, got {correlation_m!r}")
    py, px = 2 * ny, 2 * nx
    white = torch.randn((b, py, px), generator=generator, dtype=torch.float64)
    fy = torch.fft.fftfreq(py, d=pitch_m, dtype=torch.float64)
    fx = torch.fft.fftfreq(px, d=pitch_m, dtype=torch.float64)
    psd = torch.exp(-((math.pi * correlation_m) ** 2) * (fy[:, None] ** 2 + fx[None, :] ** 2))
    filt = torch.sqrt(psd / psd.mean())
    field = torch.fft.ifft2(torch.fft.fft2(white, norm="ortho") * filt, norm="ortho").real
    return field[:, :ny, :nx] * rms


def source_spectrum(
    center_m: float,
    fwhm_m: float,
    samples: int,
    shape: Literal["gaussian", "tophat"] = "gaussian",
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Quadrature (wavelengths, weights summing to 1) of one colour channel's emission spectrum.

    Gaussian spectra use Gauss-Hermite nodes (exact for polynomials in lambda of degree
    2 S - 1 against the Gaussian), top-hat spectra of full width fwhm_m Gauss-Legendre nodes:
    a PSF varies smoothly with lambda (its scale and the dispersed phase), so a few nodes
    integrate it far better than as many equally spaced samples. fwhm_m = 0 gives the centre.
    """
    if not (math.isfinite(center_m) and center_m > 0):
        raise ValueError(f"center_m must be a positive wavelength, got {center_m!r}")
    if not (math.isfinite(fwhm_m) and fwhm_m >= 0):
        raise ValueError(f"source_fwhm_m must be >= 0, got {fwhm_m!r}")
    n = int(samples)
    if n < 1:
        raise ValueError(f"spectrum_samples must be >= 1, got {samples!r}")
    if fwhm_m == 0 or n == 1:
        return (float(center_m),), (1.0,)
    if shape == "gaussian":
        t, w = np.polynomial.hermite_e.hermegauss(n)
        lams = center_m + (fwhm_m / FWHM_PER_SIGMA) * t
    elif shape == "tophat":
        t, w = np.polynomial.legendre.leggauss(n)
        lams = center_m + 0.5 * fwhm_m * t
    else:
        raise ValueError(f"spectrum_shape must be 'gaussian' or 'tophat', got {shape!r}")
    if lams.min() <= 0:
        raise ValueError(f"source_fwhm_m={fwhm_m:g} reaches non-positive wavelengths")
    w = w / w.sum()
    return tuple(float(v) for v in lams), tuple(float(v) for v in w)
