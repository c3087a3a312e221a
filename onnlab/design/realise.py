"""Realisation: phase maps whose wave-optics PSFs match a stack of trained free-form PSFs.

A free frontend (`OpticalFrontend`) learns any non-negative kernel; a meta-optic can only make
the PSFs that `psfs_from_phases` allows. `realise` finds, for each kernel's sub-aperture, the
phase map phi (at the design wavelength) that minimises the relative L2 distance between its
PSF stack and the target, by gradient descent through the validated wave model itself (no
surrogate), so the reported error is exactly what the student will see.

What is matched — absolute PSFs, energy included (the default, ``match="absolute"``). Why: the
student's backend was trained on features whose scale is the kernel's transmission t_k <= 1.
A phase-only mask transmits all light, but it can steer the part it does not need out of the
kernel window (a grating term), so any t_k up to the window efficiency a shape permits is
physically reachable, and the realised PSFs keep the energies the backend expects. Matching
only shapes (``match="shape"``, both normalised to unit sum) would concentrate as much light as
possible in the window; loading such PSFs into the student changes every feature's scale by
efficiency / t_k, an accuracy loss that has nothing to do with the shape. Shape matching is
offered for designs that rescale features digitally; the reported ``rel_error`` is always the
absolute one (what the student sees), ``shape_rel_error`` the normalised one, and
``efficiency`` the window energy / incident power in both modes.

Polychromatic systems (CIFAR-10): one phase map gives the R, G and B PSFs, coupled by
dispersion (phase scales with lambda0 / lambda and the material's index contrast; the
focal-plane scale with lambda). The channels are fitted jointly on one phase map and the
per-channel error is reported; independent free RGB kernels are generally not realisable
exactly, because three targets share one set of degrees of freedom.

Optimisation: all restarts of all kernels are one batched tensor (R*K, N, N) through one
`psfs_from_phases` call per step (Adam with a cosine-decayed step, then L-BFGS polishing); the
best restart is kept per kernel. Every restart starts from a Gerchberg-Saxton (MRAF) estimate at
the design wavelength — alternating between the pupil (unit amplitude on the aperture, phase
free) and the focal plane (each pixel scaled to the target power inside the kernel window, the
field damped but free outside, where unwanted light may go) with the matrix Fourier transform
sampled on sensor sub-pixels — seeded with a flat phase (restart 0) or smooth random phases.
On the trained MNIST student, L-BFGS reaches a given error in fewer PSF evaluations than Adam,
so the default spends 100 Adam steps and up to 200 L-BFGS iterations.

What limits the error is physics, not the optimiser: a sub-aperture of side D forms intensity
PSFs band-limited to spatial frequencies D / (lambda f). With a diffraction spot lambda f / D
larger than a sensor pixel, a 7x7 kernel window holds only a few resolvable spots and arbitrary
free kernels cannot be realised (`RealisationResult.spot_px` reports the spot in pixels). Even
below one pixel, the square aperture's sinc^2 side lobes spill into the neighbours: a perfect
F/5 focus puts 0.75 of the light into one 3.45 um pixel, so a free kernel that concentrates
0.9 of the light in one pixel (as fully trained MNIST students do) cannot be matched to a few
per cent; ``info["focus_centre_pixel"]`` and ``info["target_peak_pixel"]`` report both.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from onnlab.design.gs import gerchberg_saxton, smooth_random_phases
from onnlab.models.phase_frontend import OVERSAMPLE
from onnlab.models.phase_frontend import check_sampling as check_phase_samples
from onnlab.optics.layout import OpticsConfig
from onnlab.optics.psf import RefractiveIndex, psfs_from_phases

Match = Literal["absolute", "shape"]


@dataclass
class RealisationResult:
    """Phase maps and what they achieve (tensors on CPU, float64).

    phases: (K, N, N) radians at the design wavelength, wrapped to [0, 2 pi).
    psfs: (K, C, k, k) realised PSFs (physical energies: each sums to its window efficiency).
    target: (K, C, k, k) the PSFs that were matched.
    rel_error: (K,) ||psfs - target|| / ||target|| over all channels (absolute PSFs).
    rel_error_per_channel: (K, C) the same per colour channel.
    shape_rel_error: (K,) the error of the unit-sum-normalised PSFs.
    efficiency: (K,) window energy / incident power, all channels (sum of psfs).
    efficiency_per_channel: (K, C) window energy / incident power of each wavelength.
    """

    phases: torch.Tensor
    psfs: torch.Tensor
    target: torch.Tensor
    rel_error: torch.Tensor
    rel_error_per_channel: torch.Tensor
    shape_rel_error: torch.Tensor
    efficiency: torch.Tensor
    efficiency_per_channel: torch.Tensor
    config: OpticsConfig
    match: str
    n_phase: int
    spot_px: float
    wall_s: float
    oversample: int = OVERSAMPLE
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (per kernel and means)."""
        return {
            "match": self.match,
            "n_phase": self.n_phase,
            "oversample": self.oversample,
            "spot_px": self.spot_px,
            "rel_error_mean": float(self.rel_error.mean()),
            "rel_error_max": float(self.rel_error.max()),
            "rel_error": self.rel_error.tolist(),
            "rel_error_per_channel": self.rel_error_per_channel.tolist(),
            "shape_rel_error": self.shape_rel_error.tolist(),
            "efficiency": self.efficiency.tolist(),
            "efficiency_per_channel": self.efficiency_per_channel.tolist(),
            "target_energy": self.target.sum(dim=(1, 2, 3)).tolist(),
            "wall_s": self.wall_s,
            **self.info,
        }


def spot_px(config: OpticsConfig) -> float:
    """Diffraction spot lambda_max f / D in sensor pixels: above ~1 the PSF is band-limited
    below the pixel grid and arbitrary kernels cannot be realised."""
    lam = max(config.wavelengths_m)
    return lam * config.focal_length_m / config.kernel_size_m / config.sensor_pitch_m


def default_n_phase(config: OpticsConfig, margin: float = 3.0) -> int:
    """Phase samples per sub-aperture side: at least 32, and fine enough that the alias-free
    focal window lambda_min f / pitch is `margin` times the kernel window (room to steer
    unwanted light out of the window without aliasing it back in)."""
    lam = min(config.wavelengths_m)
    need = margin * config.kernel_extent_m * config.kernel_size_m / (lam * config.focal_length_m)
    n = max(32, math.ceil(need))
    return n + (n % 2)


def check_sampling(config: OpticsConfig, n_phase: int) -> None:
    """ValueError naming n_phase when N samples per sub-aperture would alias the PSF window
    (the phase frontend's Fraunhofer checks, plus the smallest N that passes them)."""
    try:
        check_phase_samples(config, n_phase)
    except ValueError as exc:
        lam = min(config.wavelengths_m)
        need = math.ceil(
            config.kernel_size_m * config.kernel_extent_m / (lam * config.focal_length_m)
        )
        raise ValueError(
            f"n_phase={n_phase!r} undersamples the optics (use n_phase >= {need}): {exc}"
        ) from exc


def resolve_index(material: Any) -> RefractiveIndex | None:
    """A refractive-index callable from a Material, a material name, a callable, or None."""
    if material is None:
        return None
    if isinstance(material, str):
        from onnlab.optics.materials import get_material

        material = get_material(material)
    index = getattr(material, "index", material)
    if not callable(index):
        raise ValueError(f"material must be a Material, a name or n(lambda), got {material!r}")
    return index


def _check_target(psfs: torch.Tensor, config: OpticsConfig) -> torch.Tensor:
    if not isinstance(psfs, torch.Tensor) or psfs.ndim != 4:
        raise ValueError("psfs must be a (K, C, k, k) tensor")
    k, c = config.kernel_px, config.in_channels
    if tuple(psfs.shape[1:]) != (c, k, k):
        raise ValueError(
            f"psfs must have shape (K, {c}, {k}, {k}) for this OpticsConfig "
            f"(wavelengths_m, kernel_px), got {tuple(psfs.shape)}"
        )
    target = psfs.detach().to("cpu", torch.float64)
    if not torch.isfinite(target).all() or (target < 0).any():
        raise ValueError("psfs must be finite and non-negative (intensities)")
    if (target.flatten(1).sum(1) <= 0).any():
        raise ValueError("psfs: every kernel needs some energy (a zero PSF has no shape)")
    if (target.flatten(1).sum(1) > 1 + 1e-6).any():
        raise ValueError("psfs: a kernel carries more energy than the incident light (> 1)")
    return target


def _errors(psfs: torch.Tensor, target: torch.Tensor, match: Match) -> torch.Tensor:
    """(B,) relative L2 error in the matched sense (differentiable)."""
    if match == "shape":
        psfs = psfs / psfs.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)
        target = target / target.sum(dim=(1, 2, 3), keepdim=True)
    diff = (psfs - target).flatten(1).norm(dim=1)
    return diff / target.flatten(1).norm(dim=1)


def realise(
    psfs: torch.Tensor,
    config: OpticsConfig,
    *,
    n_phase: int | None = None,
    material: Any = None,
    match: Match = "absolute",
    restarts: int = 2,
    steps: int = 100,
    polish_steps: int = 200,
    lr: float = 0.1,
    gs_iterations: int = 50,
    seed: int = 0,
    oversample: int = OVERSAMPLE,
    init_phases: torch.Tensor | None = None,
) -> RealisationResult:
    """Fit phase maps (K, N, N) whose PSFs match `psfs` (K, C, k, k) through the wave model.

    Args:
        psfs: target PSF stack in the frontend convention (non-negative, each kernel summing to
            its transmission <= 1; channels weighted 1/C as `psf_from_phase` does).
        config: the optics (wavelengths, sub-aperture, focal length, sensor); its
            reference_wavelength_m is the design wavelength of the returned phases.
        n_phase: phase samples N per sub-aperture side (default `default_n_phase`).
        material: dispersion of the mask (Material, name, or n(lambda)); None = only the
            lambda0 / lambda scaling of a thin element.
        match: "absolute" (energies included, default) or "shape" (see the module docstring).
        restarts: independent starts per kernel, optimised as one batch; best kept per kernel.
        steps / polish_steps: Adam steps, then L-BFGS iterations.
        oversample: sub-pixels per sensor pixel and axis of the PSF integration (the phase
            frontend's, so that realised and trained-through PSFs are the same numbers).
        init_phases: (K, N, N) start for restart 0 instead of Gerchberg-Saxton.
    """
    t0 = time.perf_counter()
    target = _check_target(psfs, config)
    if match not in ("absolute", "shape"):
        raise ValueError(f"match must be 'absolute' or 'shape', got {match!r}")
    if restarts < 1 or steps < 0 or polish_steps < 0:
        raise ValueError(
            f"restarts must be >= 1 and steps, polish_steps >= 0, got {restarts}, {steps}, "
            f"{polish_steps}"
        )
    n = default_n_phase(config) if n_phase is None else n_phase
    check_sampling(config, n)
    index = resolve_index(material)
    n_kernels, channels = target.shape[:2]
    gen = torch.Generator().manual_seed(int(seed))

    # Design-wavelength target for the GS start (undo the 1/C channel weight).
    lam0 = config.reference_wavelength_m
    lams = list(config.wavelengths_m)
    if any(math.isclose(lam0, x, rel_tol=1e-9) for x in lams):
        c0 = min(range(channels), key=lambda i: abs(lams[i] - lam0))
        gs_target = target[:, c0] * channels
    else:
        gs_target = target.sum(1)
    starts = []
    for r in range(restarts):
        if r == 0 and init_phases is not None:
            if tuple(init_phases.shape) != (n_kernels, n, n):
                raise ValueError(f"init_phases must be ({n_kernels}, {n}, {n})")
            starts.append(init_phases.detach().to("cpu", torch.float64))
            continue
        if r == 0:
            init = torch.zeros(n_kernels, n, n, dtype=torch.float64)
        else:
            init = smooth_random_phases(config, n_kernels, n, gen)
        starts.append(
            gerchberg_saxton(gs_target, config, n, iterations=gs_iterations, init=init)
            if gs_iterations > 0
            else init
        )
    phi = torch.cat(starts).clone().requires_grad_(True)
    tgt = target.repeat(restarts, 1, 1, 1)

    def errors() -> torch.Tensor:
        out = psfs_from_phases(
            phi, config, oversample=oversample, refractive_index=index, check=False
        )
        return _errors(out, tgt, match)

    opt = torch.optim.Adam([phi], lr=lr)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        loss = (errors() ** 2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if polish_steps:
        lbfgs = torch.optim.LBFGS(
            [phi], lr=1.0, max_iter=polish_steps, history_size=20, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            lbfgs.zero_grad(set_to_none=True)
            value = (errors() ** 2).sum()
            value.backward()
            return value

        lbfgs.step(closure)
    with torch.no_grad():
        err = errors().view(restarts, n_kernels)
        best = err.argmin(0)
        pick = best * n_kernels + torch.arange(n_kernels)
        phases = torch.remainder(phi.detach()[pick], 2 * math.pi)
    return _result(
        phases, target, config, index, match, n, oversample, t0, {"restart_chosen": best.tolist()}
    )


def _result(phases, target, config, index, match, n, oversample, t0, info) -> RealisationResult:
    with torch.no_grad():
        out = psfs_from_phases(phases, config, oversample=oversample, refractive_index=index)
        norm = target.flatten(2).norm(dim=2)
        per_channel = (out - target).flatten(2).norm(dim=2) / norm.clamp_min(1e-30)
        per_channel = torch.where(norm > 0, per_channel, torch.nan)
        channels = target.shape[1]
        # Diagnostic of the band limit: the power a perfect focus (flat phase) puts into the
        # centre pixel, against the largest pixel of each target (both per channel sum).
        focus = psfs_from_phases(
            torch.zeros(1, n, n, dtype=torch.float64), config, oversample=oversample
        )
        k = config.kernel_px // 2
        info = {
            **info,
            "focus_centre_pixel": float(focus[0, :, k, k].sum()),
            "target_peak_pixel": target.sum(1).flatten(1).amax(1).tolist(),
        }
    return RealisationResult(
        phases=phases,
        psfs=out,
        target=target,
        rel_error=_errors(out, target, "absolute"),
        rel_error_per_channel=per_channel,
        shape_rel_error=_errors(out, target, "shape"),
        efficiency=out.sum(dim=(1, 2, 3)),
        efficiency_per_channel=out.sum(dim=(2, 3)) * channels,
        config=config,
        match=match,
        n_phase=n,
        spot_px=spot_px(config),
        wall_s=time.perf_counter() - t0,
        oversample=oversample,
        info=info,
    )
