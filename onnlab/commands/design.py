"""CLI: `onnlab design realise CHECKPOINT` and `onnlab design export CHECKPOINT`.

The designer's step between training and fabrication. `realise` fits phase maps to a free
student's PSFs and scores the student with the realised PSFs; `export` writes the fabrication
files (phase/height maps, metadata, previews, GDSII) of a phase student or of a realised free
student. Bad options are refused before any work, in one line naming the option (exit 2).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer

from onnlab.commands.options import choices, data_root_option, seed0_option

design_app = typer.Typer(
    help="Realise trained PSFs as phase masks and export them for fabrication.",
    no_args_is_help=True,
)


class Match(str, Enum):
    """What realisation matches: absolute PSFs (energy included) or unit-sum shapes."""

    absolute = "absolute"
    shape = "shape"


OUT_HELP = "Run folder (created; files of an earlier run there are replaced; default: new)."
CHECKPOINT_HELP = "A student model.pt written by onnlab (free or phase frontend)."
MATERIAL_HELP = (
    "Mask material: SiO2, Si3N4, TiO2, SU-8, IP-Dip, or cauchy:A,B_m2[,C_m4] "
    "(default: the student's)."
)


def _run_dir(out: Path | None, kind: str) -> Path:
    from onnlab.runtime import run_dir_at

    return run_dir_at(out, kind)


def _material(text: str | None) -> Any:
    """A Material from a name or `cauchy:A,B[,C]` (ConfigError naming --material)."""
    from onnlab.errors import ConfigError
    from onnlab.optics.materials import Material, get_material

    if text is None:
        return None
    try:
        if text.lower().startswith("cauchy:"):
            values = [float(v) for v in text.split(":", 1)[1].split(",")]
            if not 2 <= len(values) <= 3:
                raise ValueError("cauchy: needs A,B_m2 or A,B_m2,C_m4")
            return Material("custom-cauchy", *values)
        return get_material(text)
    except ValueError as exc:
        raise ConfigError(f"--material {text!r}: {exc}") from exc


def _prepare(
    checkpoint: Path,
    material: str | None,
    design_wavelength_m: float | None,
    n_phase: int | None,
    levels: int | None = None,
):
    """Load the checkpoint and validate every fabrication option before any work."""
    from onnlab.design.heights import check_index, check_levels
    from onnlab.design.realise import check_sampling
    from onnlab.design.source import load_source, with_overrides
    from onnlab.errors import CheckpointError, ConfigError

    mat = _material(material)
    try:
        if levels is not None:
            check_levels(levels)
    except ValueError as exc:
        raise ConfigError(f"--levels: {exc}") from exc
    try:
        source = load_source(checkpoint)
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}") from exc
    try:
        system = with_overrides(
            source.system,
            source.kind,
            material=mat,
            design_wavelength_m=design_wavelength_m,
            n_phase=n_phase,
        )
    except ValueError as exc:
        flag = "--design-wavelength-m" if "design_wavelength_m" in str(exc) else "--material"
        flag = "--n-phase" if "n_phase" in str(exc) else flag
        raise ConfigError(f"{flag}: " + " ".join(str(exc).split())) from exc
    try:
        lam0 = system.optics.reference_wavelength_m
        check_index(system.material.index(lam0), f"--material {system.material.name} index")
    except ValueError as exc:
        raise ConfigError(f"--material: {exc}") from exc
    try:
        check_sampling(system.optics, system.phase_samples)
    except ValueError as exc:
        raise ConfigError(f"--n-phase: {exc}") from exc
    return source, system


def _table(result) -> list[str]:
    c = result.rel_error_per_channel.shape[1]
    head = "kernel  rel. L2 error  efficiency"
    if c > 1:
        head += (
            "  per-channel error ("
            + ", ".join(f"{lam * 1e9:.0f} nm" for lam in result.config.wavelengths_m)
            + ")"
        )
    lines = [head]
    for k in range(result.phases.shape[0]):
        row = f"{k:>6}  {float(result.rel_error[k]):>13.4f}  {float(result.efficiency[k]):>10.3f}"
        if c > 1:
            row += "  " + " ".join(f"{float(v):.4f}" for v in result.rel_error_per_channel[k])
        lines.append(row)
    lines.append(
        f"  mean  {float(result.rel_error.mean()):>13.4f}  {float(result.efficiency.mean()):>10.3f}"
    )
    return lines


def _psf_figure(path: Path, result, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = result.phases.shape[0]
    cols = min(k, 8)
    fig, axes = plt.subplots(
        2, cols, figsize=(1.4 * cols + 1.6, 3.4), squeeze=False, layout="constrained"
    )
    vmax = float(result.target.sum(1).max())
    im = None
    for j in range(cols):
        for row, (data, name) in enumerate(((result.target, "free"), (result.psfs, "realised"))):
            ax = axes[row, j]
            im = ax.imshow(data[j].sum(0).numpy(), cmap="magma", vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name)
        axes[0, j].set_title(f"K{j}: err {float(result.rel_error[j]):.3f}", fontsize=8)
    fig.colorbar(im, ax=axes, label="fraction of incident power per pixel", shrink=0.8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@design_app.command("realise")
def realise_command(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help=CHECKPOINT_HELP),
    out: Path | None = typer.Option(None, metavar="DIR", file_okay=False, help=OUT_HELP),
    material: str | None = typer.Option(None, metavar="NAME", help=MATERIAL_HELP),
    design_wavelength_m: float | None = typer.Option(
        None, metavar="METRES", help="Design wavelength (default: the optics' reference one)."
    ),
    n_phase: int | None = typer.Option(
        None, metavar="INT", help="Phase samples N per sub-aperture side (default: the student's)."
    ),
    match: Match = typer.Option(
        Match.absolute, metavar=choices(Match), help="Match absolute PSFs or only their shapes."
    ),
    restarts: int = typer.Option(2, min=1, metavar="INT", help="Starts per kernel (best kept)."),
    steps: int = typer.Option(100, min=0, metavar="INT", help="Adam steps (then L-BFGS polish)."),
    seed0: int = seed0_option("Seed of the random restarts."),
    data_root: Path | None = data_root_option(),
    eval_limit: int | None = typer.Option(
        None,
        min=1,
        metavar="INT",
        show_default="all",
        help="Evaluate on at most this many test images.",
    ),
    evaluate: bool = typer.Option(
        True, "--evaluate/--no-evaluate", help="Score the student with free vs realised PSFs."
    ),
) -> None:
    """Fit phase maps to a free student's PSFs; report error, efficiency and accuracy."""
    from onnlab.data import load_dataset
    from onnlab.design.student import evaluate_with_psfs, realise_source, save_realisation
    from onnlab.errors import ConfigError
    from onnlab.runtime import write_json

    source, system = _prepare(checkpoint, material, design_wavelength_m, n_phase)
    if source.kind != "free":
        raise ConfigError(
            f"{checkpoint} has a phase-mask frontend: nothing to realise; run "
            "`onnlab design export` on it"
        )
    test = load_dataset(source.task, "test", data_root, limit=eval_limit) if evaluate else None
    run_dir = _run_dir(out, f"design-realise-{source.task}")
    typer.echo(f"run folder: {run_dir}")
    o = system.optics
    typer.echo(
        f"realising {source.free_psfs().shape[0]} kernels: N={system.phase_samples}, "
        f"{system.material.name}, f={o.focal_length_m * 1e3:g} mm, "
        f"D={o.kernel_size_m * 1e3:g} mm, design wavelength {o.reference_wavelength_m * 1e9:.0f} nm"
    )
    result = realise_source(
        source, system, match=match.value, restarts=restarts, steps=steps, seed=seed0
    )
    if result.spot_px > 1.0:
        typer.echo(
            f"warning: the diffraction spot lambda f / D is {result.spot_px:.2f} sensor pixels; "
            "pixel-scale kernels are beyond the optics' band limit"
        )
    for line in _table(result):
        typer.echo(line)
    focus, peaks = result.info["focus_centre_pixel"], result.info["target_peak_pixel"]
    over = sum(p > focus for p in peaks)
    if over:
        typer.echo(
            f"note: {over} kernel(s) put more light into one pixel (up to {max(peaks):.2f}) "
            f"than a perfect focus can ({focus:.2f}): their error is the diffraction limit"
        )
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": source.sha256,
        "task": source.task,
        "realisation": result.summary(),
    }
    if test is not None:
        ev = evaluate_with_psfs(source, result.psfs, test)
        summary["evaluation"] = ev
        typer.echo(
            f"test {ev['metric']} on {ev['n_images']} images: free {100 * ev['free']:.2f} %, "
            f"realised {100 * ev['realised']:.2f} % (drop {ev['drop_points']:.2f} points)"
        )
    save_realisation(run_dir / "realisation.npz", result, system, source)
    _psf_figure(
        run_dir / "psfs.png",
        result,
        f"{source.task}: free vs realised PSFs (channel sum), N={system.phase_samples}, "
        f"{system.material.name}",
    )
    write_json(run_dir / "summary.json", summary)
    typer.echo(f"realisation: {run_dir / 'realisation.npz'}  ({result.wall_s:.1f} s)")


@design_app.command("export")
def export_command(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help=CHECKPOINT_HELP),
    out: Path | None = typer.Option(None, metavar="DIR", file_okay=False, help=OUT_HELP),
    material: str | None = typer.Option(None, metavar="NAME", help=MATERIAL_HELP),
    design_wavelength_m: float | None = typer.Option(
        None, metavar="METRES", help="Design wavelength (default: the optics' reference one)."
    ),
    levels: int = typer.Option(8, metavar="INT", help="Height levels L of the mask (>= 2)."),
    realised: Path | None = typer.Option(
        None,
        metavar="FILE",
        dir_okay=False,
        help="A realisation.npz from `design realise` (free students; default: realise now).",
    ),
    n_phase: int | None = typer.Option(
        None,
        metavar="INT",
        help="Phase samples N per sub-aperture side (free students; default: the student's).",
    ),
    restarts: int = typer.Option(
        2, min=1, metavar="INT", help="Realisation starts per kernel (free students)."
    ),
    steps: int = typer.Option(
        100, min=0, metavar="INT", help="Realisation Adam steps (free students)."
    ),
    seed0: int = seed0_option("Seed of the realisation's random restarts."),
) -> None:
    """Write phase/height maps, metadata, previews and a GDSII of a student's optics."""
    from onnlab.design.export import export_design
    from onnlab.design.student import load_realisation, realise_source
    from onnlab.errors import ConfigError

    source, system = _prepare(checkpoint, material, design_wavelength_m, n_phase, levels)
    target = None
    if source.kind == "phase":
        if realised is not None:
            raise ConfigError("--realised is for free students; a phase student has its phases")
        phases = source.frontend.design_phases().to("cpu")
    elif realised is not None:
        try:
            result, stored, meta = load_realisation(realised)
        except ValueError as exc:
            raise ConfigError(f"--realised: {exc}") from exc
        if stored != system:
            raise ConfigError(
                f"--realised {realised} was made for another system (material, optics or N) "
                "than the options give; pass the same --material/--design-wavelength-m/--n-phase"
            )
        if meta.get("checkpoint_sha256") not in (None, source.sha256):
            raise ConfigError(f"--realised {realised} was made from another checkpoint")
        phases, target = result.phases, result.target
    else:
        typer.echo("realising the free PSFs first (use --realised to reuse a realisation)")
        result = realise_source(source, system, restarts=restarts, steps=steps, seed=seed0)
        for line in _table(result):
            typer.echo(line)
        phases, target = result.phases, result.target
    run_dir = _run_dir(out, f"design-export-{source.task}")
    meta = export_design(
        run_dir,
        phases,
        system,
        levels=levels,
        target_psfs=target,
        provenance={
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": source.sha256,
            "task": source.task,
            "frontend": source.kind,
            "realised": str(realised) if realised else None,
        },
    )
    q = meta["quantisation"]
    typer.echo(
        f"{meta['n_kernels']} sub-apertures, {levels} levels of {meta['material']['name']}, "
        f"max height {meta['max_height_m'] * 1e6:.3f} um; quantisation changes the PSFs by "
        f"{100 * max(q['psf_rel_change_quantised_vs_design']):.1f} % (max)"
    )
    typer.echo(
        f"GDSII round trip: max relative PSF error {meta['gds_roundtrip_max_rel_psf_error']:.2e}"
    )
    typer.echo(f"wrote {run_dir}: design.h5, metadata.json, phase.png, height.png, mask.gds")


def register(app: typer.Typer) -> None:
    """Add `onnlab design realise|export`."""
    app.add_typer(design_app, name="design")
