"""One PNG that shows whether a calibration can be trusted, at a glance.

Top: design vs measured PSFs per kernel (and their difference), so fabrication errors and
a failed fit (noise, checkerboards, clipped kernels) are visible. Bottom: the PSF-fit residual
map on the camera (structure = a model error, e.g. stray light or misregistration), the display
response, the focus curve, the photon-transfer curve and the fiducial misfit. Uses only what
the artifact stores, so a report can be regenerated from any saved calibration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calibration.artifact import CalibrationArtifact


def write_report(art: CalibrationArtifact, path: str | Path) -> Path:
    """Render the report PNG for ``art`` to ``path`` (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = art.arrays
    design = art.design_psfs.sum(1)
    meas = art.psfs.sum(1)
    n_k = design.shape[0]
    cols = max(n_k, 5)
    fig = plt.figure(figsize=(2.0 * cols + 1.0, 10.0), constrained_layout=True)
    grid = fig.add_gridspec(5, cols, height_ratios=[1, 1, 1, 0.12, 2.2])
    vmax = float(max(design.max(), meas.max()))
    dmax = float(np.abs(meas - design).max()) or 1.0
    rows = (
        ("design PSF", "magma", (0, vmax), lambda k: design[k], "energy fraction / px"),
        ("measured PSF", "magma", (0, vmax), lambda k: meas[k], "energy fraction / px"),
        ("measured − design", "RdBu_r", (-dmax, dmax), lambda k: meas[k] - design[k], "Δ / px"),
    )
    for row, (label, cmap, lim, img, unit) in enumerate(rows):
        axes = []
        for k in range(n_k):
            ax = fig.add_subplot(grid[row, k])
            im = ax.imshow(img(k), cmap=cmap, vmin=lim[0], vmax=lim[1])
            title = f"kernel {k}" if row == 0 else (f"α = {art.alpha[k]:.3f}" if row == 1 else "")
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            axes.append(ax)
        axes[0].set_ylabel(label, fontsize=8)
        fig.colorbar(im, ax=axes, shrink=0.85, pad=0.01).set_label(unit, fontsize=7)
    bottom = grid[4, :].subgridspec(1, 5)
    _panel_residual(fig.add_subplot(bottom[0, 0]), a)
    _panel_response(fig.add_subplot(bottom[0, 1]), art)
    _panel_focus(fig.add_subplot(bottom[0, 2]), a, art.meta.focus_position_m)
    _panel_ptc(fig.add_subplot(bottom[0, 3]), art)
    _panel_fiducials(fig.add_subplot(bottom[0, 4]), a)
    m = art.meta
    kind = "SIMULATED bench" if m.notes.get("simulated") else "bench"
    k_px = art.psfs.shape[-1]
    fig.suptitle(
        f"Calibration report — {kind} {m.bench_config_hash[:10]}, {m.created_utc[:16]} UTC, "
        f"{n_k} kernels of {k_px}×{k_px} px (PSFs summed over colours; α = measured / design "
        "energy)\n"
        f"camera gain {m.camera.gain_dn_per_e:.4f} DN/e⁻, read noise {m.camera.read_noise_e:.2f} "
        f"e⁻ · registration shift (y, x) = ({m.registration.ty:+.3f}, {m.registration.tx:+.3f})"
        f" px, rotation {np.degrees(m.registration.rotation_rad):+.3f}°, "
        f"scale ×{m.registration.scale:.4f}",
        fontsize=10,
    )
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _missing(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\nnot measured", ha="center", va="center", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _panel_residual(ax, a: dict) -> None:
    if "psf_residual_map_dn" not in a:
        return _missing(ax, "PSF residual")
    im = ax.imshow(a["psf_residual_map_dn"], cmap="viridis")
    ax.set_title("PSF fit: RMS residual per camera pixel", fontsize=8)
    ax.set_xlabel("camera x (px)", fontsize=7)
    ax.set_ylabel("camera y (px)", fontsize=7)
    ax.figure.colorbar(im, ax=ax, shrink=0.7).set_label("DN", fontsize=7)


def _panel_response(ax, art: CalibrationArtifact) -> None:
    a = art.arrays
    ax.plot(np.arange(len(art.response_lut)), art.response_lut, lw=1, label="LUT")
    if "response_levels" in a:
        ax.plot(a["response_levels"], a["response_measured"], "o", ms=3, label="measured")
    d = art.meta.display
    ax.set_title(f"display response: γ = {d.gamma:.3f}, black = {d.black_level:.4f}", fontsize=8)
    ax.set_xlabel("grey level shown (0–255)", fontsize=7)
    ax.set_ylabel("relative intensity (white = 1)", fontsize=7)
    ax.legend(fontsize=6)


def _panel_focus(ax, a: dict, best: float | None) -> None:
    if "focus_positions_m" not in a:
        return _missing(ax, "focus")
    z = a["focus_positions_m"] * 1e3
    ax.plot(z, a["focus_metric"], ".", ms=4)
    if best is not None:
        ax.axvline(best * 1e3, color="r", lw=1)
    ax.set_title("focus curve (red line: chosen position)", fontsize=8)
    ax.set_xlabel("stage z (mm)", fontsize=7)
    ax.set_ylabel("sharpness metric (a.u.)", fontsize=7)


def _panel_ptc(ax, art: CalibrationArtifact) -> None:
    a = art.arrays
    if "ptc_means_dn" not in a:
        return _missing(ax, "photon transfer")
    c = art.meta.camera
    x = a["ptc_means_dn"]
    ax.plot(x, a["ptc_vars_dn2"], ".", ms=4)
    ax.plot(x, c.gain_dn_per_e * (x - c.offset_dn) + (c.gain_dn_per_e * c.read_noise_e) ** 2, lw=1)
    ax.set_title(f"photon transfer: gain {c.gain_dn_per_e:.4f} DN/e⁻", fontsize=8)
    ax.set_xlabel("mean (DN)", fontsize=7)
    ax.set_ylabel("variance (DN²)", fontsize=7)


def _panel_fiducials(ax, a: dict) -> None:
    """Misfit arrows, magnified so the largest spans ~12 % of the field, with a scale key."""
    if "fiducials_measured_yx" not in a:
        return _missing(ax, "registration")
    m, p = a["fiducials_measured_yx"], a["fiducials_predicted_yx"]
    d = m - p
    err = np.sqrt((d**2).sum(1))
    extent = float(np.ptp(p, axis=0).max()) or 1.0
    largest = float(err.max()) or 1e-3
    magnify = 0.12 * extent / largest
    ax.plot(p[:, 1], p[:, 0], ".", color="0.6", ms=3)
    q = ax.quiver(
        p[:, 1],
        p[:, 0],
        d[:, 1],
        d[:, 0],
        angles="xy",
        scale_units="xy",
        scale=1 / magnify,
        color="C3",
        width=0.006,
    )
    key = float(f"{largest:.1g}")
    ax.quiverkey(q, 0.75, 1.02, key, f"{key:g} px", labelpos="E", fontproperties={"size": 7})
    ax.invert_yaxis()
    rms = float(np.sqrt((err**2).mean()))
    ax.set_title(f"fiducial misfit ×{magnify:.0f}, RMS {rms:.3f} px", fontsize=8, pad=14)
    ax.set_xlabel("camera x (px)", fontsize=7)
    ax.set_ylabel("camera y (px)", fontsize=7)
    ax.set_aspect("equal")
