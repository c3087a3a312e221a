"""From physical constraints to the network whose accuracy is estimated.

The designer gives the aperture (h, w), the side of one kernel's sub-aperture, the minimum
edge spacing, the wavelengths and the sensor; Eq. 1 (`onnlab.optics.layout.kernel_layout`,
reused, never re-derived) gives how many kernels fit and where. The task fixes the input
(channels, image size, classes) and the backend defaults of the zoo's student (sensor binning
``pool``), so the design maps to an `Architecture` for the estimator plus a description of the
resulting network and sensor footprint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from onnlab.estimate.estimator import Architecture
from onnlab.optics.layout import KernelLayout, OpticsConfig, kernel_layout

# Per task: input shape, outputs, the zoo student's kernel side and sensor binning, and the
# colour channels a frontend needs (mono for MNIST, R, G, B otherwise).
TASK_DEFAULTS: dict[str, dict] = {
    "mnist": dict(
        kind="classification",
        in_channels=1,
        image_hw=(28, 28),
        n_outputs=10,
        kernel_px=7,
        pool=4,
        wavelengths_m=(532e-9,),
    ),
    "cifar10": dict(
        kind="classification",
        in_channels=3,
        image_hw=(32, 32),
        n_outputs=10,
        kernel_px=7,
        pool=2,
        wavelengths_m=(630e-9, 532e-9, 465e-9),
    ),
    "segmentation": dict(
        kind="segmentation",
        in_channels=3,
        image_hw=(64, 64),
        n_outputs=1,
        kernel_px=3,
        pool=1,
        wavelengths_m=(630e-9, 532e-9, 465e-9),
    ),
}
# Default digital layers: the paper's Table 5 readout is one FC layer for classification; a
# pixelwise *linear* readout of linear optics cannot see texture (it predicts all background
# on the synthetic set), so segmentation defaults to a pixelwise MLP (1x1 convs, one ReLU).
DEFAULT_HIDDEN: dict[str, tuple[int, ...]] = {"mnist": (), "cifar10": (), "segmentation": (64,)}


@dataclass(frozen=True)
class NetworkDesign:
    """A physical design and the network it implies."""

    task: str
    layout: KernelLayout
    optics: OpticsConfig
    architecture: Architecture
    extras: dict = field(default_factory=dict)

    @property
    def n_kernels(self) -> int:
        return self.layout.count

    @property
    def sensor_px(self) -> tuple[int, int]:
        """Sensor pixels covered by the rows x cols feature tiles, dark gaps included."""
        (h, w), gap = self.architecture.image_hw, self.optics.gap_px
        rows, cols = self.layout.rows, self.layout.cols
        return rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap

    @property
    def n_readout_features(self) -> int:
        """Inputs of the first digital layer: K binned maps (classification), or K per pixel."""
        arch = self.architecture
        if arch.kind == "segmentation":
            return self.n_kernels
        return self.n_kernels * arch.geometry.n_cells

    @property
    def n_trainable(self) -> int:
        """Trainable digital parameters (the PSFs are frozen in the estimate)."""
        arch, width, total = self.architecture, self.n_readout_features, 0
        for h in arch.hidden:
            total += (width + 1) * h
            width = h
        return total + (width + 1) * arch.n_outputs

    def describe(self) -> list[str]:
        """Human-readable lines: layout, optics, network shape."""
        arch, lay = self.architecture, self.layout
        k, c = arch.kernel_px, arch.in_channels
        hs, ws = self.sensor_px
        pitch = self.optics.sensor_pitch_m
        lines = [
            f"layout: {lay.rows} x {lay.cols} = {lay.count} kernels of "
            f"{lay.kernel_size_m * 1e3:g} mm, pitch {lay.pitch_m * 1e3:g} mm, "
            f"fill factor {lay.fill_factor:.2f}",
            f"optics: {c} channel(s) {[f'{w * 1e9:.0f} nm' for w in self.optics.wavelengths_m]}, "
            f"PSFs ({lay.count}, {c}, {k}, {k}) frozen random",
            f"sensor: {hs} x {ws} px ({hs * pitch * 1e3:.2f} x {ws * pitch * 1e3:.2f} mm at "
            f"{pitch * 1e6:g} um pitch)",
        ]
        h, w = arch.image_hw
        if arch.kind == "segmentation":
            digital = " -> ".join([*(f"1x1 conv {x} -> ReLU" for x in arch.hidden), "1x1 conv 1"])
            lines.append(
                f"network: ({c}, {h}, {w}) -> optics ({lay.count}, {h}, {w}) -> ActNorm "
                f"-> {digital} -> mask ({h}, {w}); {self.n_trainable} trainable"
            )
        else:
            th, tw = arch.geometry.cells_hw
            digital = " -> ".join(
                [*(f"FC {x} -> ReLU" for x in arch.hidden), f"FC {arch.n_outputs}"]
            )
            lines.append(
                f"network: ({c}, {h}, {w}) -> optics ({lay.count}, {h}, {w}) -> bin {arch.pool} "
                f"({lay.count}, {th}, {tw}) -> ActNorm -> {digital}; {self.n_trainable} trainable"
            )
        return lines

    def as_dict(self) -> dict:
        lay, arch = self.layout, self.architecture
        return {
            "task": self.task,
            "rows": lay.rows,
            "cols": lay.cols,
            "n_kernels": lay.count,
            "centers_m": lay.centers_m.tolist(),
            "fill_factor": lay.fill_factor,
            "kernel_px": arch.kernel_px,
            "in_channels": arch.in_channels,
            "image_hw": list(arch.image_hw),
            "pool": arch.pool,
            "hidden": list(arch.hidden),
            "sensor_px": list(self.sensor_px),
            "n_readout_features": self.n_readout_features,
            "n_trainable": self.n_trainable,
        }


def design_network(
    task: str,
    aperture_hw_m: tuple[float, float],
    kernel_size_m: float,
    spacing_m: float,
    *,
    kernel_px: int | None = None,
    wavelengths_m: tuple[float, ...] | None = None,
    sensor_pitch_m: float = 3.45e-6,
    gap_px: int = 4,
    pool: int | None = None,
    hidden: tuple[int, ...] | None = None,
    normalise: str = "actnorm",
) -> NetworkDesign:
    """Layout (Eq. 1) and network for these constraints; ValueError names a bad parameter."""
    if task not in TASK_DEFAULTS:
        raise ValueError(f"task must be one of {tuple(TASK_DEFAULTS)}, got {task!r}")
    d = TASK_DEFAULTS[task]
    layout = kernel_layout(tuple(aperture_hw_m), kernel_size_m, spacing_m)
    wavelengths = tuple(wavelengths_m) if wavelengths_m is not None else d["wavelengths_m"]
    if len(wavelengths) != d["in_channels"]:
        raise ValueError(
            f"wavelengths_m has {len(wavelengths)} wavelength(s) but task {task!r} images have "
            f"{d['in_channels']} colour channel(s); give one wavelength per channel"
        )
    k = d["kernel_px"] if kernel_px is None else int(kernel_px)
    optics = OpticsConfig(
        wavelengths_m=wavelengths,
        aperture_hw_m=tuple(float(v) for v in aperture_hw_m),
        kernel_size_m=kernel_size_m,
        spacing_m=spacing_m,
        kernel_px=k,
        sensor_pitch_m=sensor_pitch_m,
        gap_px=gap_px,
    )
    arch = Architecture(
        d["kind"],
        d["in_channels"],
        d["image_hw"],
        d["n_outputs"],
        k,
        pool=d["pool"] if pool is None else int(pool),
        hidden=DEFAULT_HIDDEN[task] if hidden is None else tuple(hidden),
        normalise=normalise,
    )
    return NetworkDesign(task, layout, optics, arch)
