"""Layer 1 physics: grids, propagation, PSFs, kernel layout, incoherent convolution, sensor.

Everything is torch, differentiable, batched, float32 by default (float64 works), CPU or GPU.
Imports only torch / numpy / pydantic so every other layer can depend on it.
"""

from onnlab.optics.as_built import AsBuilt
from onnlab.optics.convolution import (
    FFT_KERNEL_THRESHOLD,
    cut_tiles,
    optical_conv2d,
    sensor_shape,
    tile_onto_sensor,
)
from onnlab.optics.fabrication import (
    EnergyBudget,
    as_built_heights,
    as_built_phases,
    effective_psfs,
    effective_psfs_stack,
    energy_budget,
    zero_order_psfs,
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

# The height-domain fabrication model's tolerances class is
# `onnlab.optics.fabrication.FabricationErrors`; the name `FabricationErrors` here is still the
# Eq. 10 PSF-domain draw of `sensor.py` that the simulated bench uses.
__all__ = [
    "AsBuilt",
    "EnergyBudget",
    "FFT_KERNEL_THRESHOLD",
    "FabricationErrors",
    "Grid",
    "KernelLayout",
    "OpticsConfig",
    "SensorModel",
    "angular_spectrum",
    "as_built_heights",
    "as_built_phases",
    "aperture_mask",
    "cauchy_index",
    "check_angular_spectrum",
    "check_fraunhofer",
    "cut_tiles",
    "defocus_psfs",
    "dispersed_phase",
    "effective_psfs",
    "effective_psfs_stack",
    "energy",
    "energy_budget",
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
    "zero_order_psfs",
]
