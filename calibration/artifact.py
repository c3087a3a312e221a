"""`CalibrationArtifact`: what was measured on one bench, in one self-checking HDF5 file.

Why this shape: a calibration is only useful if it is applied to the bench and the design it
was measured on. The file therefore carries typed metadata (pydantic; bench-config hash,
design-optics hash, device ids and serials, toolkit and dependency versions, UTC time,
per-step residuals, format version) next to the arrays, plus a SHA-256 over everything, and
`CalibrationArtifact.load` refuses -- with one line saying what to do -- a file from another
bench, for another design, from a newer onnlab, or one that is truncated or edited. Saving is
atomic (temp file + rename), so a crash never leaves a half-written calibration behind.

Units: PSFs are *effective* PSFs in feature units (fraction of displayed relative intensity
landing in each tile pixel, brightness alpha included); ``alpha[k]`` = energy of the measured
PSF over energy of the design PSF. Camera numbers are in DN and electrons.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from onnlab.errors import CalibrationError

FORMAT_NAME = "onnlab.calibration"
FORMAT_VERSION = 1


class DeviceRecord(BaseModel):
    """Identity of one device used during calibration."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    kind: str = ""
    implementation: str = ""
    serial: str = ""
    model: str = ""


class StepRecord(BaseModel):
    """Outcome of one procedure: its residual (the number that says whether to trust it)."""

    model_config = ConfigDict(extra="forbid")

    residual: float
    seconds: float = 0.0
    n_frames: int = 0
    values: dict[str, float] = Field(default_factory=dict)


class LayoutRecord(BaseModel):
    """How the K tiles are arranged (design) and what the camera frame looks like."""

    model_config = ConfigDict(extra="forbid")

    n_kernels: int
    in_channels: int
    kernel_px: int
    image_hw: tuple[int, int]
    rows: int
    cols: int
    gap_px: int
    camera_hw: tuple[int, int]


class CameraRecord(BaseModel):
    """Fitted camera model; DN = offset + gain·(electrons + read noise)."""

    model_config = ConfigDict(extra="forbid")

    offset_dn: float
    gain_dn_per_e: float
    read_noise_e: float
    saturation_dn: float
    linear_range_dn: tuple[float, float]
    bit_depth: int
    exposure_s: float  # exposure at which PSFs were measured (twin default)
    electrons_per_unit: float  # e⁻ per feature unit per second (full_scale_e)
    radiometry: str = "absolute"  # "absolute" (from the sensor config) | "relative" (mean α = 1)


class DisplayRecord(BaseModel):
    """Parametric part of the display response (the LUT is an array)."""

    model_config = ConfigDict(extra="forbid")

    gamma: float
    black_level: float
    bit_depth: int = 8


class RegistrationRecord(BaseModel):
    """Tile canvas → camera similarity, and the display image's own misalignment.

    camera (y, x) = scale · R(rotation_rad) · canvas (y, x) + (ty, tx); the displayed image is
    shifted by ``image_shift_px`` and rotated by ``image_rotation_rad`` about its centre
    (onnlab.optics.misalign conventions) before it reaches the kernels.
    """

    model_config = ConfigDict(extra="forbid")

    scale: float = 1.0
    rotation_rad: float = 0.0
    ty: float = 0.0
    tx: float = 0.0
    image_shift_px: tuple[float, float] = (0.0, 0.0)
    image_rotation_rad: float = 0.0
    rms_px: float = 0.0


class CalibrationMeta(BaseModel):
    """Everything except the arrays."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    created_utc: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    bench_config_hash: str
    design_hash: str
    devices: dict[str, DeviceRecord] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    layout: LayoutRecord
    camera: CameraRecord
    display: DisplayRecord
    registration: RegistrationRecord
    focus_position_m: float | None = None
    steps: dict[str, StepRecord] = Field(default_factory=dict)
    notes: dict[str, Any] = Field(default_factory=dict)


REQUIRED_ARRAYS = ("psfs", "design_psfs", "alpha", "response_lut")


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def config_hash(config: Any) -> str:
    """Stable hash of a bench config: a `drivers.registry.BenchConfig`, a mapping, or the path
    of a bench YAML (validated first, so defaults count and comments/key order do not).

    The ``source`` field (where the file was read from) is excluded: the same bench read from
    another folder is the same bench.
    """
    if isinstance(config, (str, Path)):
        from drivers.registry import load_bench_config

        config = load_bench_config(config)
    payload = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
    payload.pop("source", None)
    return sha256_hex(json.dumps(payload, sort_keys=True, default=str).encode())


def design_hash(psfs: Any) -> str:
    """Hash of the design PSF stack (shape + float32 bytes): identifies the designed optic."""
    arr = np.ascontiguousarray(np.asarray(_to_numpy(psfs), dtype=np.float32))
    return sha256_hex(repr(arr.shape).encode() + arr.tobytes())


def toolkit_versions() -> dict[str, str]:
    """Versions of onnlab and the libraries whose numerics the artifact depends on."""
    import h5py
    import scipy
    import torch

    import onnlab

    return {
        "onnlab": onnlab.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "scipy": scipy.__version__,
        "h5py": h5py.__version__,
    }


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _checksum(meta_json: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


class CalibrationArtifact:
    """Typed metadata + named arrays. Build it, `save` it, `load` it strictly."""

    def __init__(self, meta: CalibrationMeta, arrays: dict[str, Any]) -> None:
        self.meta = meta
        self.arrays = {k: np.asarray(_to_numpy(v)) for k, v in arrays.items()}
        missing = [name for name in REQUIRED_ARRAYS if name not in self.arrays]
        if missing:
            raise ValueError(f"arrays: missing required {', '.join(missing)}")

    # convenient typed views ---------------------------------------------------------------
    @property
    def psfs(self) -> np.ndarray:
        """(K, C, k, k) effective measured PSFs (feature units, α included)."""
        return self.arrays["psfs"]

    @property
    def design_psfs(self) -> np.ndarray:
        """(K, C, k, k) the design the bench was built from."""
        return self.arrays["design_psfs"]

    @property
    def alpha(self) -> np.ndarray:
        """(K,) measured/design energy ratio per kernel."""
        return self.arrays["alpha"]

    @property
    def response_lut(self) -> np.ndarray:
        """(2**bits,) relative display intensity per grey level."""
        return self.arrays["response_lut"]

    # persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write atomically: a temp file next to ``path``, fsync, then rename over it."""
        import h5py

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta_json = self.meta.model_dump_json()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT_NAME
                f.attrs["format_version"] = self.meta.format_version
                f.attrs["meta_json"] = meta_json
                f.attrs["checksum"] = _checksum(meta_json, self.arrays)
                grp = f.create_group("arrays")
                for name, arr in self.arrays.items():
                    grp.create_dataset(name, data=arr)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        bench_config: Any | None = None,
        design: Any | None = None,
    ) -> CalibrationArtifact:
        """Read and verify. Refuses (CalibrationError, one line) a corrupt or edited file, a
        newer format, a different bench (``bench_config`` hash) or design (``design`` PSFs or
        their hash string); ``None`` skips that check (for inspection tools only)."""
        import h5py

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"calibration artifact not found: {path}")
        try:
            with h5py.File(path, "r") as f:
                fmt = f.attrs.get("format")
                version = int(f.attrs.get("format_version", -1))
                meta_json = str(f.attrs["meta_json"])
                checksum = str(f.attrs["checksum"])
                arrays = {name: np.asarray(ds[()]) for name, ds in f["arrays"].items()}
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise CalibrationError(
                f"{path} is corrupt or not an onnlab calibration ({type(exc).__name__}); "
                "re-run `onnlab calibrate`"
            ) from exc
        if fmt != FORMAT_NAME:
            raise CalibrationError(f"{path} is not an onnlab calibration (format {fmt!r})")
        if version > FORMAT_VERSION:
            raise CalibrationError(
                f"{path} has calibration format v{version}, newer than this onnlab reads "
                f"(v{FORMAT_VERSION}); upgrade onnlab"
            )
        if _checksum(meta_json, arrays) != checksum:
            raise CalibrationError(
                f"{path} failed its checksum (truncated or edited); re-run `onnlab calibrate`"
            )
        try:
            meta = CalibrationMeta.model_validate_json(meta_json)
            art = cls(meta, arrays)
        except (ValueError, TypeError) as exc:
            raise CalibrationError(f"{path} has invalid metadata: {exc}") from exc
        if bench_config is not None:
            want = (
                bench_config
                if isinstance(bench_config, str) and len(bench_config) == 64
                else (config_hash(bench_config))
            )
            if want != meta.bench_config_hash:
                raise CalibrationError(
                    f"{path} was measured on a different bench (config hash "
                    f"{meta.bench_config_hash[:12]} != {want[:12]}); recalibrate this bench"
                )
        if design is not None:
            want = design if isinstance(design, str) else design_hash(design)
            if want != meta.design_hash:
                raise CalibrationError(
                    f"{path} was measured for different design optics (hash "
                    f"{meta.design_hash[:12]} != {want[:12]}); calibrate with this design"
                )
        return art

    def summary(self) -> dict[str, Any]:
        """Small JSON-able digest (for CLI tables and bench reports)."""
        m = self.meta
        return {
            "created_utc": m.created_utc,
            "bench_config_hash": m.bench_config_hash[:12],
            "gain_dn_per_e": m.camera.gain_dn_per_e,
            "read_noise_e": m.camera.read_noise_e,
            "offset_dn": m.camera.offset_dn,
            "gamma": m.display.gamma,
            "focus_position_m": m.focus_position_m,
            "registration_rms_px": m.registration.rms_px,
            "alpha": self.alpha.tolist(),
            "residuals": {k: v.residual for k, v in m.steps.items()},
            # of the captured signal power, beyond noise, that the PSF fit leaves (None: no psf
            # step, or an artifact from before it was recorded)
            "unexplained_fraction": (
                m.steps["psf"].values.get("unexplained_fraction") if "psf" in m.steps else None
            ),
        }
