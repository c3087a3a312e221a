"""Layer 1 physics: grids, propagation, PSFs, kernel layout, incoherent convolution, sensor.

Everything is torch, differentiable, batched, float32 by default (float64 works), CPU or GPU.
Imports only torch / numpy / pydantic so every other layer can depend on it.
"""

from onnlab.optics.convolution import (
    FFT_KERNEL_THRESHOLD,
    cut_tiles,
    optical_conv2d,
    sensor_shape,
    tile_onto_sensor,
)
from onnlab.optics.grid import Grid, check_angular_spectrum, check_fraunhofer, fraunhofer_pitch_m
from onnlab.optics.layout import KernelLayout, OpticsConfig, kernel_layout
from onnlab.optics.propagation import (
    angular_spectrum,
    energy,
    fraunhofer,
    fraunhofer_to,
    lens_phase,
    transfer_function,
)
from onnlab.optics.psf import (
    aperture_mask,
    cauchy_index,
    dispersed_phase,
    psf_from_phase,
    psf_from_pupil,
    psfs_from_phases,
)
from onnlab.optics.sensor import (
    FabricationErrors,
    SensorModel,
    defocus_psfs,
    misalign,
    perturb_psfs,
)

__all__ = [
    "FFT_KERNEL_THRESHOLD",
    "FabricationErrors",
    "Grid",
    "KernelLayout",
    "OpticsConfig",
    "SensorModel",
    "angular_spectrum",
    "aperture_mask",
    "cauchy_index",
    "check_angular_spectrum",
    "check_fraunhofer",
    "cut_tiles",
    "defocus_psfs",
    "dispersed_phase",
    "energy",
    "fraunhofer",
    "fraunhofer_pitch_m",
    "fraunhofer_to",
    "kernel_layout",
    "lens_phase",
    "misalign",
    "optical_conv2d",
    "perturb_psfs",
    "psf_from_phase",
    "psf_from_pupil",
    "psfs_from_phases",
    "sensor_shape",
    "tile_onto_sensor",
    "transfer_function",
]
