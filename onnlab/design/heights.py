"""Design phase <-> fabricated height, and quantisation to the L height levels a fab makes.

A thin element of index n in air delays light by (n - 1) h, so the phase it imposes at the
design wavelength lambda0 is phi = 2 pi (n(lambda0) - 1) h / lambda0. The fab receives

    h = wrap(phi) * lambda0 / (2 pi (n(lambda0) - 1)),   wrap(phi) in [0, 2 pi),

i.e. heights in [0, h_2pi) with h_2pi = lambda0 / (n(lambda0) - 1) (the 2 pi height: 1.16 um for
fused silica at 532 nm). Multi-level lithography makes L equally spaced levels
h_l = l h_2pi / L, l = 0 .. L-1 (one mask per bit for L = 2^b, or one exposure dose per level
in grey-scale lithography). Quantisation rounds the wrapped phase to the nearest level
*cyclically*: a phase just below 2 pi is level 0, not level L - 1, because 2 pi and 0 are the
same phase at lambda0 (the usual multi-level diffractive-optics convention). Functions take
plain floats for the index so that they serve any material model; `Material.index(lambda0)`
supplies it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

Array = torch.Tensor | np.ndarray


def check_levels(levels: int) -> int:
    """`levels` as an int >= 2, else ValueError naming `levels`."""
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise ValueError(
            f"levels must be an integer >= 2 (height levels of the mask), got {levels!r}"
        )
    if levels > 65535:
        raise ValueError(f"levels must be <= 65535 (stored as uint16), got {levels}")
    return int(levels)


def check_index(index: float, name: str = "refractive_index") -> float:
    """The index as a float > 1, else ValueError naming it (`name` may carry the material)."""
    n = float(index)
    if not (math.isfinite(n) and n > 1):
        raise ValueError(
            f"{name}={index!r} must be > 1: a phase element delays light by (n - 1) h, so an "
            "index <= 1 has no positive height for a phase"
        )
    return n


def _check_wavelength(design_wavelength_m: float) -> float:
    lam = float(design_wavelength_m)
    if not (math.isfinite(lam) and 0 < lam < 1e-3):
        raise ValueError(f"design_wavelength_m must be a positive length in metres, got {lam!r}")
    return lam


def height_2pi_m(design_wavelength_m: float, index: float) -> float:
    """Height that delays by one full wave at the design wavelength: lambda0 / (n - 1)."""
    return _check_wavelength(design_wavelength_m) / (check_index(index) - 1)


def _wrap(phase: Array) -> Array:
    two_pi = 2 * math.pi
    if isinstance(phase, torch.Tensor):
        return torch.remainder(phase, two_pi)
    return np.mod(phase, two_pi)


def phase_to_height(phase_rad: Array, design_wavelength_m: float, index: float) -> Array:
    """Height map in metres, h = wrap(phi) lambda0 / (2 pi (n(lambda0) - 1)), in [0, h_2pi)."""
    return _wrap(phase_rad) * (height_2pi_m(design_wavelength_m, index) / (2 * math.pi))


def height_to_phase(height_m: Array, design_wavelength_m: float, index: float) -> Array:
    """Phase in radians at the design wavelength of a height map: 2 pi (n - 1) h / lambda0."""
    return height_m * (2 * math.pi / height_2pi_m(design_wavelength_m, index))


def quantise_phase(phase_rad: Array, levels: int) -> Array:
    """Level index (0 .. L-1, integer) of each phase, rounded cyclically to l * 2 pi / L."""
    n_levels = check_levels(levels)
    step = 2 * math.pi / n_levels
    if isinstance(phase_rad, torch.Tensor):
        idx = torch.round(torch.remainder(phase_rad, 2 * math.pi) / step).long()
        return torch.remainder(idx, n_levels)
    idx = np.rint(np.mod(phase_rad, 2 * math.pi) / step).astype(np.int64)
    return np.mod(idx, n_levels)


def level_phases(level_index: Array, levels: int) -> Array:
    """Phase (radians) of level indices: l * 2 pi / L."""
    step = 2 * math.pi / check_levels(levels)
    if isinstance(level_index, torch.Tensor):
        return level_index.to(torch.float64) * step
    return np.asarray(level_index, dtype=np.float64) * step


def level_heights_m(levels: int, design_wavelength_m: float, index: float) -> np.ndarray:
    """The L fabricated heights h_l = l h_2pi / L in metres, (L,)."""
    n_levels = check_levels(levels)
    return np.arange(n_levels) * (height_2pi_m(design_wavelength_m, index) / n_levels)
