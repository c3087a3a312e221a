"""One concrete fabricated meta-optic (`AsBuilt`): the seeded deviations of one fabrication run.

A frozen record, drawn by `fabrication.FabricationErrors.draw` (a pure function of the seed) and
consumed by `fabrication.effective_psfs`; `to_dict` / `from_dict` make it a JSON truth file
that a simulated bench can keep hidden from calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onnlab.optics.layout import OpticsConfig


@dataclass(frozen=True, eq=False)
class AsBuilt:
    """One concrete fabricated optic: the seeded deviations, a pure function of the seed.

    height_scale (K,) and height_noise_m (K, N, N) are float64; spectra holds, per colour
    channel, the (wavelengths_m, weights) quadrature of the source; window_px is the PSF window
    the bench renders (kernel_px plus the leakage margin on each side).
    """

    seed: int
    strength: float
    height_scale: torch.Tensor
    height_noise_m: torch.Tensor
    levels: int | None
    offset_m: tuple[float, float]
    rotation_rad: float
    delta_z_m: float
    spectra: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]
    zero_order_fraction: float
    window_px: int

    def __post_init__(self) -> None:
        scale, noise = self.height_scale, self.height_noise_m
        if scale.ndim != 1 or not bool((scale > 0).all()):
            raise ValueError("height_scale must be a (K,) tensor of positive factors")
        if noise.ndim != 3 or noise.shape[0] != scale.shape[0] or noise.shape[1] != noise.shape[2]:
            raise ValueError(f"height_noise_m must be (K, N, N) with K={scale.shape[0]}")
        if self.levels is not None and int(self.levels) < 2:
            raise ValueError(f"levels must be None or >= 2, got {self.levels!r}")
        if not 0 <= self.zero_order_fraction < 1:
            raise ValueError(
                f"zero_order_fraction must be in [0, 1), got {self.zero_order_fraction}"
            )
        if int(self.window_px) < 1:
            raise ValueError(f"window_px must be >= 1, got {self.window_px}")
        for lams, weights in self.spectra:
            if len(lams) != len(weights) or min(lams) <= 0 or abs(sum(weights) - 1) > 1e-9:
                raise ValueError("spectra must hold (wavelengths > 0, weights summing to 1)")

    @property
    def n_kernels(self) -> int:
        return int(self.height_scale.shape[0])

    @property
    def phase_samples(self) -> int:
        return int(self.height_noise_m.shape[-1])

    @classmethod
    def perfect(cls, config: OpticsConfig, n_kernels: int, phase_samples: int) -> AsBuilt:
        """The design itself: no error, monochromatic channels, the default leakage window
        (kernel_px + 2 gap_px) -- what `FabricationErrors(strength=0).draw` returns."""
        k, n = int(n_kernels), int(phase_samples)
        return cls(
            seed=0,
            strength=0.0,
            height_scale=torch.ones(k, dtype=torch.float64),
            height_noise_m=torch.zeros(k, n, n, dtype=torch.float64),
            levels=None,
            offset_m=(0.0, 0.0),
            rotation_rad=0.0,
            delta_z_m=0.0,
            spectra=tuple(((lam,), (1.0,)) for lam in config.wavelengths_m),
            zero_order_fraction=0.0,
            window_px=config.kernel_px + 2 * config.gap_px,
        )

    def equals(self, other: AsBuilt) -> bool:
        """Field-by-field equality (tensors compared exactly)."""
        return all(
            torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            for a, b in zip(self._values(), other._values(), strict=True)
        )

    def _values(self) -> tuple:
        return tuple(getattr(self, k) for k in self.__dataclass_fields__)

    def to_dict(self) -> dict:
        """JSON-able form (a bench's hidden truth file)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["height_scale"] = self.height_scale.tolist()
        out["height_noise_m"] = self.height_noise_m.tolist()
        out["spectra"] = [[list(w), list(p)] for w, p in self.spectra]
        out["offset_m"] = list(self.offset_m)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> AsBuilt:
        """Inverse of `to_dict`."""
        return cls(
            seed=int(d["seed"]),
            strength=float(d["strength"]),
            height_scale=torch.tensor(d["height_scale"], dtype=torch.float64),
            height_noise_m=torch.tensor(d["height_noise_m"], dtype=torch.float64),
            levels=None if d["levels"] is None else int(d["levels"]),
            offset_m=(float(d["offset_m"][0]), float(d["offset_m"][1])),
            rotation_rad=float(d["rotation_rad"]),
            delta_z_m=float(d["delta_z_m"]),
            spectra=tuple((tuple(w), tuple(p)) for w, p in d["spectra"]),
            zero_order_fraction=float(d["zero_order_fraction"]),
            window_px=int(d["window_px"]),
        )
