"""What a design starts from: a student checkpoint's optics, its PSFs or phases, and a hash.

Why a module of its own: `design realise`, `design export` and `bench design` all need the same
answers — which physical system (optics, material, phase samples) a checkpoint was trained
for, whether its frontend is free (PSFs to realise) or a phase mask (phases to export), and the
checkpoint's sha256 that the fabrication metadata records — and all must refuse a checkpoint
without an optical frontend with one clear line.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onnlab.models.phase_frontend import PhaseMaskFrontend, PhaseSystem
from onnlab.models.zoo import student_system
from onnlab.optics.layout import OpticsConfig
from onnlab.optics.materials import Material, get_material


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (streamed)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class DesignSource:
    """A loaded student and the physics it was designed for."""

    path: Path | None
    task: str
    model: nn.Module
    meta: dict[str, Any]
    kind: str  # "free" | "phase"
    system: PhaseSystem
    sha256: str | None

    @property
    def frontend(self) -> nn.Module:
        return self.model.frontend

    def free_psfs(self) -> torch.Tensor:
        """(K, C, k, k) PSFs the student uses now (free: its trained kernels)."""
        with torch.no_grad():
            return self.frontend.psfs().detach().to("cpu", torch.float64)


def frontend_kind(model: nn.Module, where: str = "model") -> str:
    """ "free" or "phase"; ValueError naming the checkpoint when there is no optical frontend."""
    frontend = getattr(model, "frontend", None)
    if isinstance(frontend, PhaseMaskFrontend):
        return "phase"
    if frontend is not None and callable(getattr(frontend, "psfs", None)):
        return "free"
    raise ValueError(
        f"checkpoint {where} has no optical frontend (a {type(model).__name__}, e.g. a teacher); "
        "pass a hybrid-ONN student checkpoint"
    )


def with_overrides(
    system: PhaseSystem,
    kind: str,
    *,
    material: str | Material | None = None,
    design_wavelength_m: float | None = None,
    n_phase: int | None = None,
) -> PhaseSystem:
    """The system with the user's fabrication choices.

    A free student's PSFs do not depend on a mask, so material, design wavelength and N are
    free choices for its realisation. A phase student was trained through one material's
    dispersion at one design wavelength with N samples: a different choice would fabricate a
    different optic than the one evaluated, so it is refused (ValueError naming the option).
    """
    optics, mat, n = system.optics, system.material, system.phase_samples
    new_mat = get_material(material) if material is not None else mat
    if kind == "phase":
        if new_mat != mat:
            raise ValueError(
                f"material={new_mat.name} differs from the material the phase student was "
                f"trained with ({mat.name}); omit --material"
            )
        if design_wavelength_m is not None and not math.isclose(
            design_wavelength_m, optics.reference_wavelength_m, rel_tol=1e-9
        ):
            raise ValueError(
                f"design_wavelength_m={design_wavelength_m:g} differs from the phase student's "
                f"design wavelength {optics.reference_wavelength_m:g} m; omit it"
            )
        if n_phase is not None and n_phase != n:
            raise ValueError(f"n_phase={n_phase} differs from the phase student's N={n}; omit it")
        return system
    if design_wavelength_m is not None:
        lam0 = float(design_wavelength_m)
        if not (math.isfinite(lam0) and 0 < lam0 < 1e-3):
            raise ValueError(
                f"design_wavelength_m must be a positive wavelength in metres, got {lam0!r}"
            )
        optics = OpticsConfig(**{**optics.model_dump(), "design_wavelength_m": design_wavelength_m})
    for lam in (*optics.wavelengths_m, optics.reference_wavelength_m):
        new_mat.index(lam)  # ValueError naming the material when n <= 1
    return PhaseSystem(optics, new_mat, n if n_phase is None else int(n_phase), system.oversample)


def load_source(path: str | Path) -> DesignSource:
    """Load a student checkpoint for design (ValueError without an optical frontend)."""
    from onnlab.training.checkpoint import load_checkpoint

    path = Path(path)
    model, meta = load_checkpoint(path)
    kind = frontend_kind(model, str(path))
    return from_model(model, meta, path=path, kind=kind)


def from_model(
    model: nn.Module,
    meta: dict[str, Any],
    *,
    path: Path | None = None,
    kind: str | None = None,
) -> DesignSource:
    """A DesignSource for an in-memory student (meta: checkpoint meta with task, architecture)."""
    kind = kind or frontend_kind(model)
    task = meta["task"]
    if kind == "phase":
        fe = model.frontend
        system = PhaseSystem(fe.optics, fe.material, fe.phase_samples, fe.oversample)
    else:
        system = student_system(task, **meta.get("architecture", {}))
    return DesignSource(
        path=path,
        task=task,
        model=model,
        meta=meta,
        kind=kind,
        system=system,
        sha256=sha256_file(path) if path is not None else None,
    )
