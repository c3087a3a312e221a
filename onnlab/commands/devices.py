"""CLI command: `onnlab devices [--config configs/bench/sim.yaml] [--json]`.

Lists and probes every device of a bench config: opens it, reads its description and live
status, closes it. A device that fails is reported on its row (one line, typed error) and the
others are still probed, so one command tells what on the bench works. For GenICam cameras it
also lists the GenTL producers (.cti) found. Exit code 1 when any device failed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from onnlab.commands.options import config_option, console, json_option


def _describe(info: dict[str, Any]) -> str:
    if info.get("resolution_hw"):
        h, w = info["resolution_hw"]
        return f"{h}x{w} px" + (f", {info['bit_depth']}-bit" if info.get("bit_depth") else "")
    if info.get("limits_m"):
        lo, hi = info["limits_m"]
        return f"limits [{lo * 1e3:.3f}, {hi * 1e3:.3f}] mm"
    return ""


def _achieved_frame_rate(
    camera: Any, timeout_s: float, n: int = 20, budget_s: float = 1.0
) -> float:
    """Frames/s of back-to-back `capture()` calls (at most `n` frames or `budget_s`)."""
    import time

    camera.capture(timeout_s=timeout_s)  # the clock starts at a delivered frame
    t0, count = time.perf_counter(), 0
    while count < n and time.perf_counter() - t0 < budget_s:
        camera.capture(timeout_s=timeout_s)
        count += 1
    return count / max(time.perf_counter() - t0, 1e-9)


def probe_devices(config_path: Path, timeout_s: float = 10.0) -> dict[str, Any]:
    """Open, describe and close every device of a bench config; never raises for a device."""
    from drivers.errors import DeviceError
    from drivers.genicam_harvester import find_producers
    from drivers.registry import build_sim_bench, create_device
    from onnlab.commands.options import bench_config

    config, _ = bench_config(config_path)
    rows: list[dict[str, Any]] = []
    sim_bench = None
    if any(d.driver == "sim" for d in config.devices.values()):
        sim_bench = build_sim_bench(config)
    producers: dict[str, list[str]] = {}
    for dev_id, dev in config.devices.items():
        row: dict[str, Any] = {"id": dev_id, "kind": dev.kind, "driver": dev.driver}
        if dev.driver == "genicam":
            cti = dev.cti
            if cti is not None:
                cti = [str(config.resolve(c)) for c in ([cti] if isinstance(cti, str) else cti)]
            producers[dev_id] = find_producers(cti)
        device = None
        try:
            device = create_device(config, dev_id, sim_bench)
            device.open(timeout_s=timeout_s)
            row["info"] = device.info()
            if dev.kind == "camera":  # what a capture loop really gets, trigger/policy included
                row["frame_rate_hz"] = _achieved_frame_rate(device, timeout_s)
            row["status"] = device.status(timeout_s=timeout_s)
            row["ok"] = True
        except (DeviceError, ValueError, OSError) as exc:
            row["ok"] = False
            row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        finally:
            if device is not None:
                device.close()
        rows.append(row)
    return {
        "config": str(config_path),
        "name": config.name,
        "devices": rows,
        "producers": producers,
    }


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""

    @app.command("devices")
    def devices(
        config: Path | None = config_option(),
        as_json: bool = json_option(),
        timeout_s: float = typer.Option(
            10.0, min=0.0, metavar="SECONDS", help="Timeout for opening and probing each device."
        ),
    ) -> None:
        """List and probe every device of a bench (kind, driver, serial, size, status)."""
        from drivers.registry import default_config_path

        path = config if config is not None else default_config_path()
        report = probe_devices(path, timeout_s=timeout_s)
        if as_json:
            from onnlab.runtime import to_jsonable

            typer.echo(json.dumps(to_jsonable(report), indent=2))
        else:
            _print_table(report)
        if not all(row["ok"] for row in report["devices"]):
            raise typer.Exit(1)


def _print_table(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"bench {report['name']!r} ({report['config']})")
    for col in ("id", "kind", "implementation", "model / serial", "size / limits", "status"):
        table.add_column(col)
    for row in report["devices"]:
        info = row.get("info", {})
        ident = " / ".join(str(info.get(k)) for k in ("model", "serial") if info.get(k))
        if row["ok"]:
            status = row["status"].get("state", "?")
            extra = {k: v for k, v in row["status"].items() if k != "state"}
            if "position_m" in extra:
                status += f", z={extra['position_m'] * 1e3:.4f} mm"
            if "frames" in extra:
                f = extra["frames"]
                status += f", {f['delivered']} frames, {f['dropped']} dropped"
            if "frame_rate_hz" in row:
                status += f", {row['frame_rate_hz']:.1f} frames/s achieved"
        else:
            status = f"[red]{escape(row['error'])}[/red]"
        table.add_row(
            row["id"],
            row["kind"],
            info.get("implementation", row["driver"]),
            escape(ident),
            _describe(info),
            status if not row["ok"] else escape(status),
        )
    out = console()
    out.print(table)
    for dev_id, files in report["producers"].items():
        out.print(f"GenTL producers for {dev_id}: {', '.join(files) or 'none found'}")
