"""Bench configs (YAML, pydantic-validated) and opening devices by id (`slm0`, `cam0`, ...).

A bench config names each device, its kind and its driver; everything else is driver
specific. A broken config fails early with ONE line naming the file, the field and what was
expected (`ConfigurationError`), never with a traceback from deep inside a vendor library.

Example (see ``configs/bench/sim.yaml`` and ``configs/bench/lab-example.yaml``)::

    devices:
      slm0:   {kind: slm, driver: sim}
      cam0:   {kind: camera, driver: genicam, cti: null, serial: "12345", exposure_s: 0.01}
      stage0: {kind: stage, driver: smc100, port: /dev/ttyUSB0, limits_m: [0.0, 0.025]}
    sim:
      design: {task: mnist, kernels: 8, kernel_px: 7, seed: 0}
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from drivers.errors import ConfigurationError
from drivers.sim.faults import FaultConfig

Kind = Literal["slm", "camera", "stage"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SimDeviceConfig(_Strict):
    """A twin from the shared `SimulatedBench` (its parameters live in the `sim` section)."""

    kind: Kind
    driver: Literal["sim"] = "sim"


class SlmsuiteConfig(_Strict):
    """Any slmsuite SLM class by import path, e.g. ``slmsuite.hardware.slms.screenmirrored.
    ScreenMirrored``, constructed with ``kwargs``. Only classes from ``slmsuite.hardware.slms``
    are accepted (checked here, before any import; the driver also checks the class is a
    subclass of slmsuite's SLM): a config can never name ``subprocess.Popen`` or the like."""

    kind: Literal["slm"] = "slm"
    driver: Literal["slmsuite"]
    class_path: str = Field(alias="class", pattern=r"^[\w.]+\.\w+$")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    mode: Literal["intensity", "phase"] = "intensity"
    lut: list[float] | str | None = None  # grey -> intensity table, or path to a .npy/.csv
    gamma: float | None = Field(None, gt=0)  # used when no lut is given (default 2.2)
    settle_s: float = Field(0.05, ge=0)

    @field_validator("class_path")
    @classmethod
    def _slmsuite_only(cls, v: str) -> str:
        from drivers.slm_slmsuite import check_slm_class_path

        try:
            return check_slm_class_path(v)
        except ConfigurationError as exc:
            raise ValueError(exc.message) from None


class GenicamConfig(_Strict):
    """A GenICam camera through harvesters and a GenTL producer (.cti)."""

    kind: Literal["camera"] = "camera"
    driver: Literal["genicam"]
    cti: list[str] | str | None = None  # None: search GENICAM_GENTL64_PATH
    serial: str | None = None
    model: str | None = None
    exposure_s: float | None = Field(None, gt=0)
    gain_db: float | None = None
    roi: tuple[int, int, int, int] | None = None  # (offset_y, offset_x, height, width)
    pixel_format: str | None = None
    frame_rate_hz: float | None = Field(None, gt=0)
    buffers: int = Field(4, ge=1)
    # free_run | software (TriggerSoftware per capture) | hardware (trigger_source, e.g. Line0)
    trigger: Literal["free_run", "software", "hardware"] = "free_run"
    trigger_source: str | None = None
    trigger_activation: str | None = None  # e.g. RisingEdge (hardware trigger)
    # latency vs rate in free run: every frame in order (full_rate), or only frames whose
    # exposure starts after the capture call (after_call: at best half the camera's rate)
    frame_policy: Literal["full_rate", "after_call"] = "full_rate"
    timestamp_wrap_s: float | None = Field(None, gt=0)  # device clock period, to unwrap


class Smc100Config(_Strict):
    """A Newport SMC100CC/PP controller on a serial port (or ``sim://smc100?id=NAME`` for the
    simulated controller, `drivers.sim.protocol_sim`)."""

    kind: Literal["stage"] = "stage"
    driver: Literal["smc100"]
    port: str
    address: int = Field(1, ge=1, le=31)
    baudrate: int = 57600
    limits_m: tuple[float, float]
    units_per_m: float = Field(1000.0, gt=0)  # controller units (mm) per metre
    home_on_open: bool = False
    home_timeout_s: float = Field(60.0, gt=0)  # a real home search takes 8-30 s
    enable_on_open: bool = False  # send MM1 to a DISABLED controller on open (explicit only)

    @field_validator("limits_m")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError("expected [min, max] with min < max")
        return v


def _device_tag(value: Any) -> str:
    if isinstance(value, dict):
        return "sim" if value.get("driver", "sim") == "sim" else str(value.get("driver"))
    return "sim" if getattr(value, "driver", "sim") == "sim" else str(value.driver)


DeviceConfig = Annotated[
    Annotated[SimDeviceConfig, Tag("sim")]
    | Annotated[SlmsuiteConfig, Tag("slmsuite")]
    | Annotated[GenicamConfig, Tag("genicam")]
    | Annotated[Smc100Config, Tag("smc100")],
    Discriminator(
        _device_tag,
        custom_error_type="invalid_driver",
        custom_error_message="driver: expected one of 'sim', 'slmsuite', 'genicam', 'smc100'",
    ),
]


class SimDesign(_Strict):
    """Where a stand-alone sim bench gets its design PSFs: a seeded design, or a file."""

    task: Literal["mnist", "cifar10", "segmentation"] = "mnist"
    kernels: int = Field(8, ge=1)
    kernel_px: int = Field(7, ge=1)
    channels: Literal[1, 3] | None = None
    seed: int = 0
    psfs_path: str | None = None  # .npy / .pt with (K, C, k, k); relative to the config file
    phase_samples: int = Field(64, ge=2)  # physical model: phase samples N per sub-aperture side
    material: str = "SiO2"  # physical model: the optic's material (onnlab.optics.materials)


class SimConfig(_Strict):
    """Parameters of `drivers.sim.SimulatedBench` (sensor fields as in `SensorModel`)."""

    design: SimDesign = Field(default_factory=SimDesign)
    # "physical" (default): frames through the wave model of the as-built optic
    # (drivers.sim.physical); "legacy": per-pixel PSF errors and Gaussian defocus
    # (drivers.sim.model), nearly calibration's own model.
    model: Literal["legacy", "physical"] = "physical"
    optics: dict[str, Any] = Field(default_factory=dict)  # OpticsConfig overrides (physical)
    fabrication: dict[str, Any] = Field(default_factory=dict)  # FabricationErrors fields
    image_hw: tuple[int, int] | None = None  # default: the task's image size
    rows: int | None = Field(None, ge=1)
    cols: int | None = Field(None, ge=1)
    gap_px: int = Field(4, ge=0)
    margin_px: int = Field(6, ge=0)
    seed: int = 0
    error_strength: float = Field(1.0, ge=0)
    exposure_s: float = Field(1.0, gt=0)
    sensor: dict[str, Any] = Field(default_factory=dict)
    faults: FaultConfig = Field(default_factory=FaultConfig)


class BenchConfig(_Strict):
    """A whole bench: devices by id, plus the simulator's parameters when any device is sim."""

    name: str = "bench"
    devices: dict[str, DeviceConfig]
    sim: SimConfig = Field(default_factory=SimConfig)
    source: str | None = Field(None, description="file this config was read from")

    @field_validator("devices")
    @classmethod
    def _non_empty(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("expected at least one device")
        for dev_id in v:
            if not dev_id.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"device id {dev_id!r}: expected letters, digits, '_' or '-'")
        sim_kinds = [d.kind for d in v.values() if d.driver == "sim"]
        for kind in set(sim_kinds):
            if sim_kinds.count(kind) > 1:
                raise ValueError(f"expected at most one simulated {kind} (one SimulatedBench)")
        return v

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        if p.is_absolute() or self.source is None:
            return p
        return Path(self.source).parent / p


_TAGS = ("sim", "slmsuite", "genicam", "smc100")


def _format_error(source: str, exc: ValidationError) -> str:
    """First validation error as 'file: field.path: what was expected, got X' (shared helper)."""
    from onnlab.config_errors import format_validation

    return format_validation(source, exc, BenchConfig, drop=_TAGS)


def parse_bench_config(data: Any, source: str = "<config>") -> BenchConfig:
    """Validate an already-loaded mapping; ConfigurationError names source + field."""
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"{source}: <root>: expected a mapping with a 'devices' section, got "
            f"{type(data).__name__}",
            operation="config",
        )
    try:
        return BenchConfig.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigurationError(_format_error(source, exc), operation="config") from exc


def load_bench_config(path: str | Path) -> BenchConfig:
    """Read a bench YAML (yaml.safe_load) and validate it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"bench config not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        raise ConfigurationError(f"{p}: {where}: not valid YAML", operation="config") from exc
    return parse_bench_config(data, str(p))


def default_config_path() -> Path:
    """``configs/bench/sim.yaml`` of this checkout (the default everywhere)."""
    return Path(__file__).resolve().parents[1] / "configs" / "bench" / "sim.yaml"


class OpenDevices(dict):
    """Devices by id; closes them all on `close()` / leaving the `with` block.

    ``sim_bench`` is the shared `SimulatedBench` when any device is simulated (its ``truth``
    is for tests and benchmarks only).
    """

    sim_bench: Any = None

    def close(self) -> None:
        for dev in self.values():
            dev.close()

    def __enter__(self) -> OpenDevices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_sim_bench(config: BenchConfig, design_psfs: Any = None) -> Any:
    """The `SimulatedBench` described by ``config.sim`` (device ids taken from the config)."""
    import torch

    from drivers.sim import TASK_DEFAULTS, SimulatedBench
    from drivers.sim.design import sim_design
    from onnlab.optics import SensorModel

    sim = config.sim
    d = sim.design
    optic = None
    if design_psfs is None:
        design_psfs, phases = sim_design(config)
        if phases is not None:
            optic = _physical_optic(config, phases)
    ids = {"slm": "slm0", "camera": "cam0", "stage": "stage0"}
    for dev_id, dev in config.devices.items():
        if dev.driver == "sim":
            ids[dev.kind] = dev_id
    try:
        sensor = SensorModel(**sim.sensor)
    except (ValidationError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"{config.source}: sim.sensor: {' '.join(str(exc).split())}", operation="config"
        ) from exc
    image_hw = sim.image_hw or TASK_DEFAULTS[d.task]["image_hw"]
    return SimulatedBench(
        torch.as_tensor(design_psfs, dtype=torch.float32),
        image_hw,
        sensor=sensor,
        rows=sim.rows,
        cols=sim.cols,
        gap_px=sim.gap_px,
        margin_px=sim.margin_px,
        seed=sim.seed,
        faults=sim.faults,
        error_strength=sim.error_strength,
        exposure_s=sim.exposure_s,
        device_ids=(ids["slm"], ids["camera"], ids["stage"]),
        optic=optic,
    )


def _physical_optic(config: BenchConfig, phases: Any) -> Any:
    """The as-built optic of a physical sim bench: the seeded phase design, fabricated with
    ``sim.fabrication`` (FabricationErrors fields) drawn from ``sim.seed``."""
    from drivers.sim.bench import NOMINAL_FOCUS_M
    from drivers.sim.physical import build_optic
    from onnlab.optics.fabrication import FabricationErrors
    from onnlab.optics.seeded_design import sim_optics

    sim = config.sim
    try:
        optics = sim_optics(sim.design.task, {**sim.optics, "kernel_px": sim.design.kernel_px})
        errors = FabricationErrors(**{"strength": sim.error_strength, **sim.fabrication})
    except (ValidationError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"{config.source}: sim.optics / sim.fabrication: {' '.join(str(exc).split())}",
            operation="config",
        ) from exc
    return build_optic(
        phases, optics, sim.design.material, sim.seed, errors, nominal_focus_m=NOMINAL_FOCUS_M
    )


def _driver_class(dev: Any) -> Any:
    module, name = {
        "slmsuite": ("drivers.slm_slmsuite", "SlmsuiteSLM"),
        "genicam": ("drivers.camera_genicam", "GenicamCamera"),
        "smc100": ("drivers.stage_smc100", "SMC100Stage"),
    }[dev.driver]
    return getattr(importlib.import_module(module), name)


def create_device(config: BenchConfig, dev_id: str, sim_bench: Any = None) -> Any:
    """An unopened device object for `dev_id` (sim twins come from `sim_bench`)."""
    if dev_id not in config.devices:
        raise ConfigurationError(
            f"{config.source}: devices: no device {dev_id!r}; configured: "
            f"{', '.join(config.devices)}",
            operation="config",
        )
    dev = config.devices[dev_id]
    if dev.driver == "smc100" and dev.port.startswith("sim://"):
        from drivers.sim import protocol_sim  # the real driver never imports the simulator

        protocol_sim.register()
    if dev.driver == "sim":
        if sim_bench is None:
            sim_bench = build_sim_bench(config)
        return {"slm": sim_bench.slm, "camera": sim_bench.camera, "stage": sim_bench.stage}[
            dev.kind
        ]
    return _driver_class(dev).from_config(dev_id, dev, config)


def open_devices(
    config: BenchConfig | str | Path,
    ids: list[str] | None = None,
    *,
    design_psfs: Any = None,
    timeout_s: float = 10.0,
) -> OpenDevices:
    """Open the configured devices (all, or `ids`); on any failure close what was opened.

    Args:
        config: a `BenchConfig` or the path of a bench YAML.
        design_psfs: (K, C, k, k) PSFs for the sim bench (e.g. the trained student's);
            overrides ``sim.design``.
    """
    if not isinstance(config, BenchConfig):
        config = load_bench_config(config)
    wanted = list(config.devices) if ids is None else list(ids)
    out = OpenDevices()
    if any(config.devices.get(i) is not None and config.devices[i].driver == "sim" for i in wanted):
        out.sim_bench = build_sim_bench(config, design_psfs)
    try:
        for dev_id in wanted:
            device = create_device(config, dev_id, out.sim_bench)
            device.open(timeout_s=timeout_s)
            out[dev_id] = device
    except BaseException:
        out.close()
        raise
    slms = [d for d in out.values() if d.kind == "slm"]
    for cam in (d for d in out.values() if d.kind == "camera"):
        if hasattr(cam, "pattern_source") and len(slms) == 1:
            cam.pattern_source = slms[0]  # frames carry the id of the pattern on the SLM
    return out
