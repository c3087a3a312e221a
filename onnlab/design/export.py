"""Fabrication export: phase and height maps, metadata, previews and GDSII of one design.

`export_design(out_dir, phases, system, levels=L)` writes

* ``design.h5`` — arrays with their units as attributes: ``phase_rad`` (K, N, N) design phase
  at the design wavelength, wrapped to [0, 2 pi); ``level_index`` (K, N, N) quantised level l;
  ``phase_quantised_rad`` (l 2 pi / L); ``height_m`` (K, N, N) quantised heights
  l h_2pi / L (what the fab makes); ``height_continuous_m``; ``level_heights_m`` (L,);
  ``centers_m`` (K, 2) kernel centres (y, x); ``psfs_design`` / ``psfs_quantised`` (K, C, k, k)
  PSFs through the wave model, and ``psfs_target`` when the design realises target PSFs;
* ``metadata.json`` — units, wavelengths, design wavelength, phase pitch and N, optics, material
  (with its index at the design wavelength), levels and heights, the GDSII layer map, the
  checkpoint's sha256, the onnlab version, the quantisation's PSF change and the GDSII round
  trip error;
* ``phase.png`` / ``height.png`` — the whole aperture at physical scale (um axes, colour bars);
* ``mask.gds`` — one layer per height level (`onnlab.design.gds`).

The GDSII is re-imported, rasterised and passed through the wave model before the export
returns: ``gds_roundtrip_max_rel_psf_error`` (max over kernels of ||p_gds - p_q|| / ||p_q||
against the quantised design's PSFs) is recorded, so a broken file never leaves silently.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from onnlab import __version__
from onnlab.design.gds import LABEL_LAYER, LAYER_BASE, MaskGeometry, read_gds, write_gds
from onnlab.design.heights import (
    check_index,
    check_levels,
    height_2pi_m,
    level_heights_m,
    level_phases,
    phase_to_height,
    quantise_phase,
)
from onnlab.design.student import system_json
from onnlab.models.phase_frontend import PhaseSystem
from onnlab.optics.grid import Grid
from onnlab.optics.layout import kernel_layout
from onnlab.optics.psf import psfs_from_phases


def rel_errors(psfs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(K,) ||psfs - reference|| / ||reference|| per kernel (all channels)."""
    diff = (psfs - reference).flatten(1).norm(dim=1)
    return diff / reference.flatten(1).norm(dim=1).clamp_min(1e-300)


def mask_geometry(system: PhaseSystem, n_kernels: int) -> MaskGeometry:
    """Kernel centres (Eq. 1 layout, row-major: kernel k is the k-th sub-aperture) and pitch."""
    layout = kernel_layout(system.optics)
    if n_kernels > layout.count:
        raise ValueError(
            f"{n_kernels} kernels do not fit: aperture_hw_m={system.optics.aperture_hw_m} holds "
            f"{layout.count} sub-apertures (Eq. 1)"
        )
    n = system.phase_samples
    return MaskGeometry(layout.centers_m[:n_kernels], n, system.optics.kernel_size_m / n)


def gds_roundtrip_error(
    gds_path: Path, geometry: MaskGeometry, levels: int, system: PhaseSystem, psfs_q: torch.Tensor
) -> float:
    """Max relative PSF error of the re-imported, rasterised GDSII vs the quantised design."""
    idx = torch.from_numpy(read_gds(gds_path, geometry, levels))
    psfs = psfs_from_phases(
        level_phases(idx, levels),
        system.optics,
        refractive_index=system.material.index,
        oversample=system.oversample,
    )
    return float(rel_errors(psfs, psfs_q).max())


def export_design(
    out_dir: str | Path,
    phases: torch.Tensor,
    system: PhaseSystem,
    *,
    levels: int,
    target_psfs: torch.Tensor | None = None,
    provenance: dict[str, Any] | None = None,
    previews: bool = True,
) -> dict[str, Any]:
    """Write the fabrication files of `phases` (K, N, N, radians at the design wavelength).

    Raises ValueError naming `levels` (< 2) or the material (index <= 1 at the design
    wavelength) before anything is written.
    """
    t0 = time.perf_counter()
    n_levels = check_levels(levels)
    optics, material = system.optics, system.material
    lam0 = optics.reference_wavelength_m
    n0 = check_index(
        material.index(lam0), f"material {material.name!r}: index at design_wavelength_m={lam0:g}"
    )
    phases = phases.detach().to("cpu", torch.float64)
    k, n = phases.shape[0], phases.shape[-1]
    if tuple(phases.shape) != (k, system.phase_samples, system.phase_samples):
        raise ValueError(
            f"phases must be (K, {system.phase_samples}, {system.phase_samples}) for this system, "
            f"got {tuple(phases.shape)}"
        )
    geometry = mask_geometry(system, k)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    wrapped = torch.remainder(phases, 2 * math.pi)
    idx = quantise_phase(wrapped, n_levels)
    phase_q = level_phases(idx, n_levels)
    heights = level_heights_m(n_levels, lam0, n0)
    height_q = heights[idx.numpy()]
    index = material.index
    m = system.oversample
    psfs_design = psfs_from_phases(wrapped, optics, refractive_index=index, oversample=m)
    psfs_q = psfs_from_phases(phase_q, optics, refractive_index=index, oversample=m)

    gds_path = out / "mask.gds"
    gds_info = write_gds(gds_path, idx.numpy(), geometry, n_levels)
    roundtrip = gds_roundtrip_error(gds_path, geometry, n_levels, system, psfs_q)

    quant = {
        "psf_rel_change_quantised_vs_design": rel_errors(psfs_q, psfs_design).tolist(),
        "efficiency_design": psfs_design.sum(dim=(1, 2, 3)).tolist(),
        "efficiency_quantised": psfs_q.sum(dim=(1, 2, 3)).tolist(),
    }
    if target_psfs is not None:
        tgt = target_psfs.detach().to("cpu", torch.float64)
        quant["rel_error_design_vs_target"] = rel_errors(psfs_design, tgt).tolist()
        quant["rel_error_quantised_vs_target"] = rel_errors(psfs_q, tgt).tolist()

    with h5py.File(out / "design.h5", "w") as h5:
        h5.attrs["format"] = "onnlab-design"
        h5.attrs["onnlab_version"] = __version__

        def put(name: str, data: np.ndarray, unit: str, what: str) -> None:
            ds = h5.create_dataset(name, data=data, compression="gzip")
            ds.attrs["unit"] = unit
            ds.attrs["description"] = what

        put("phase_rad", wrapped.numpy(), "rad", "design phase at the design wavelength")
        put("level_index", idx.numpy().astype(np.uint16), "1", "height level l (0 .. L-1)")
        put("phase_quantised_rad", phase_q.numpy(), "rad", "l * 2 pi / L")
        put("height_m", height_q, "m", "quantised height l * h_2pi / L (fabricated)")
        put(
            "height_continuous_m",
            phase_to_height(wrapped, lam0, n0).numpy(),
            "m",
            "unquantised height",
        )
        put("level_heights_m", heights, "m", "height of each level")
        put("centers_m", geometry.centers_m, "m", "kernel centres (y, x) from the aperture centre")
        put("psfs_design", psfs_design.numpy(), "1", "PSFs of the design (fraction of power)")
        put("psfs_quantised", psfs_q.numpy(), "1", "PSFs of the quantised design")
        if target_psfs is not None:
            put("psfs_target", tgt.numpy(), "1", "PSFs the design realises")

    meta = {
        "format": "onnlab-design",
        "onnlab_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "units": {
            "lengths": "m (GDSII: um)",
            "phase": "rad at the design wavelength",
            "psf": "fraction of the power incident on a sub-aperture",
        },
        "wavelengths_m": list(optics.wavelengths_m),
        "design_wavelength_m": lam0,
        "n_kernels": k,
        "phase_samples": n,
        "phase_pitch_m": geometry.pitch_m,
        "material": {
            "name": material.name,
            "cauchy_a": material.cauchy_a,
            "cauchy_b_m2": material.cauchy_b_m2,
            "cauchy_c_m4": material.cauchy_c_m4,
            "index_at_design_wavelength": n0,
        },
        "levels": n_levels,
        "height_2pi_m": height_2pi_m(lam0, n0),
        "level_heights_m": heights.tolist(),
        "max_height_m": float(heights[-1]),
        "system": system_json(system),
        "gds": {
            **gds_info,
            "file": gds_path.name,
            "layer_base": LAYER_BASE,
            "label_layer": LABEL_LAYER,
            "coordinates": "optics (x, y) in um, origin at the aperture centre",
        },
        "gds_roundtrip_max_rel_psf_error": roundtrip,
        "quantisation": quant,
        "provenance": provenance or {},
        "files": {
            "design.h5": "phase, level, height maps and PSFs (units as dataset attributes)",
            "mask.gds": "GDSII layout, one layer per height level",
            "phase.png": "design phase preview",
            "height.png": "quantised height preview",
        },
    }
    if previews:
        _previews(out, wrapped.numpy(), height_q, geometry, system, n_levels)
    meta["wall_s"] = time.perf_counter() - t0
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _mosaic(maps: np.ndarray, geometry: MaskGeometry, system: PhaseSystem):
    """The K maps placed at their physical positions on the aperture (NaN between them)."""
    h, w = system.optics.aperture_hw_m
    d, n = geometry.pitch_m, geometry.n
    grid = Grid((math.ceil(h / d) + n, math.ceil(w / d) + n), d)
    canvas = np.full(grid.shape, np.nan)
    for kk in range(maps.shape[0]):
        cy, cx = geometry.centers_m[kk]
        i0 = round(cy / d) + grid.shape[0] // 2 - n // 2
        j0 = round(cx / d) + grid.shape[1] // 2 - n // 2
        canvas[i0 : i0 + n, j0 : j0 + n] = maps[kk]
    ey, ex = grid.extent_m
    extent_um = [-ex / 2 * 1e6, ex / 2 * 1e6, -ey / 2 * 1e6, ey / 2 * 1e6]
    return canvas, extent_um


def _previews(out: Path, phase, height, geometry, system, levels) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mat, lam0 = system.material.name, system.optics.reference_wavelength_m
    for name, data, label, cmap, title in (
        ("phase.png", phase, "phase (rad)", "twilight", "design phase"),
        (
            "height.png",
            height * 1e6,
            "height (µm)",
            "viridis",
            f"quantised height, {levels} levels",
        ),
    ):
        canvas, extent = _mosaic(data, geometry, system)
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
        im = ax.imshow(canvas, origin="lower", extent=extent, cmap=cmap, interpolation="nearest")
        fig.colorbar(im, ax=ax, label=label)
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("y (µm)")
        ax.set_title(
            f"{title}: {geometry.n_kernels} sub-apertures, {mat}, λ0 = {lam0 * 1e9:.0f} nm"
        )
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
