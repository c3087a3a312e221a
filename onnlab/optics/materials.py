"""Optical materials of meta-optics / diffractive elements: Cauchy dispersion with a source.

Why here (layer 1): the phase an element imposes at each colour, phi(lambda) =
phi0 * lambda0 / lambda * (n(lambda) - 1) / (n(lambda0) - 1) (`psf.dispersed_phase`), and the
height a fab must etch or print, h = phi0 * lambda0 / (2 pi (n(lambda0) - 1)), both depend on
the index contrast n - 1 of the material. A Cauchy law n = A + B / lambda^2 + C / lambda^4 is
accurate to ~1e-3 or better across 420-700 nm for the transparent dielectrics below, which is
far below what matters for n - 1 in a phase model.

Coefficients (lambda in metres: B in m^2, C in m^4; 1 um^2 = 1e-12 m^2, 1 um^4 = 1e-24 m^4):

* ``SiO2`` fused silica: least-squares three-term Cauchy fit over 420-700 nm to the Sellmeier
  formula of I. H. Malitson, J. Opt. Soc. Am. 55, 1205 (1965); max residual 5e-5.
  n(532 nm) = 1.4607. The classic multi-level etched diffractive-optics substrate.
* ``Si3N4`` silicon nitride (LPCVD stoichiometric): fit over 420-700 nm to the Sellmeier formula
  of K. Luke et al., Opt. Lett. 40, 4823 (2015); max residual 1.2e-4. n(532 nm) = 2.056.
  A common visible metasurface material (pillars on glass).
* ``TiO2`` titanium dioxide, rutile ordinary ray: fit over 420-700 nm to J. R. DeVore,
  J. Opt. Soc. Am. 41, 416 (1951), n_o^2 = 5.913 + 0.2441 / (lambda^2 - 0.0803) (um); max
  residual 3.3e-3. n(532 nm) = 2.668. Amorphous ALD TiO2 of visible metalenses
  (R. C. Devlin et al., PNAS 113, 10473 (2016)) has a lower index (about 2.4); build a
  `Material` with measured coefficients for a specific deposition.
* ``SU-8`` epoxy resist: the manufacturer's Cauchy coefficients (MicroChem SU-8 2000 data
  sheet): A = 1.566, B = 0.00796 um^2, C = 0.00014 um^4. n(532 nm) = 1.596.
* ``IP-Dip`` two-photon-lithography resist (polymerised): T. Gissibl et al., Opt. Mater.
  Express 7, 2293 (2017): A = 1.5273, B = 6.5456e-3 um^2, C = 2.5345e-4 um^4.
  n(532 nm) = 1.554.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

_UM2 = 1e-12  # m^2 per um^2
_UM4 = 1e-24  # m^4 per um^4


@dataclass(frozen=True)
class Material:
    """A transparent dielectric with Cauchy dispersion n(lambda) = A + B / lambda^2 + C / lambda^4.

    Args:
        name: label written into design metadata.
        cauchy_a: A, the index at long wavelengths (dimensionless).
        cauchy_b_m2: B in m^2 (lambda in metres).
        cauchy_c_m4: C in m^4 (optional third Cauchy term; 0 for the two-term law).
    """

    name: str
    cauchy_a: float
    cauchy_b_m2: float
    cauchy_c_m4: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for field_name in ("cauchy_a", "cauchy_b_m2", "cauchy_c_m4"):
            value = getattr(self, field_name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{field_name} must be a finite number, got {value!r}")
            object.__setattr__(self, field_name, float(value))
        if self.cauchy_a <= 0:
            raise ValueError(f"cauchy_a must be positive (an index), got {self.cauchy_a!r}")

    def index(self, wavelength_m: float) -> float:
        """Refractive index at wavelength_m (metres); ValueError if it is not > 1 there.

        A phase element needs n > 1: with n <= 1 the height that gives a phase has no sign
        that a fab can make, and the dispersion factor (n - 1) / (n0 - 1) is meaningless.
        """
        lam = float(wavelength_m)
        if not (math.isfinite(lam) and lam > 0):
            raise ValueError(f"wavelength_m must be positive and finite, got {wavelength_m!r}")
        n = self.cauchy_a + self.cauchy_b_m2 / lam**2 + self.cauchy_c_m4 / lam**4
        if not (math.isfinite(n) and n > 1):
            raise ValueError(
                f"material {self.name!r}: refractive index n={n:.4g} at wavelength_m={lam:g} "
                "is not > 1 (check cauchy_a, cauchy_b_m2, cauchy_c_m4)"
            )
        return n

    @property
    def refractive_index(self) -> Callable[[float], float]:
        """n(lambda) as a callable, usable as `onnlab.optics.psf.RefractiveIndex`."""
        return self.index

    def check_wavelengths(self, wavelengths_m: tuple[float, ...] | list[float]) -> None:
        """Raise ValueError naming the material and wavelength unless n > 1 at every one."""
        for lam in wavelengths_m:
            self.index(lam)


MATERIALS: dict[str, Material] = {
    m.name: m
    for m in (
        Material("SiO2", 1.44768734, 3.84027811e-3 * _UM2, -4.40433199e-5 * _UM4),
        Material("Si3N4", 2.00049241, 1.53630375e-2 * _UM2, 9.14238069e-5 * _UM4),
        Material("TiO2", 2.46308125, 2.483792e-2 * _UM2, 9.34153e-3 * _UM4),
        Material("SU-8", 1.566, 0.00796 * _UM2, 0.00014 * _UM4),
        Material("IP-Dip", 1.5273, 6.5456e-3 * _UM2, 2.5345e-4 * _UM4),
    )
}
# Common aliases (case-insensitive lookups go through `get_material`).
_ALIASES = {"fused_silica": "SiO2", "fused silica": "SiO2", "sin": "Si3N4", "su8": "SU-8"}


def get_material(name: str | Material) -> Material:
    """The material called `name` (case-insensitive; a Material passes through unchanged)."""
    if isinstance(name, Material):
        return name
    if isinstance(name, str):
        key = _ALIASES.get(name.strip().lower(), name.strip())
        for known, material in MATERIALS.items():
            if known.lower() == key.lower():
                return material
    raise ValueError(f"material must be one of {sorted(MATERIALS)}, got {name!r}")
