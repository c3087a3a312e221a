"""The phase-mask frontend: trainable design phases -> PSFs through the wave model.

(Module under construction: `default_optics` is final; `PhaseMaskFrontend` follows.)
"""

from __future__ import annotations

from typing import Any

from onnlab.optics.layout import OpticsConfig

# Physical systems of the phase frontend per task, as OpticsConfig overrides of
# `OpticsConfig.preset(task)` (aperture, kernel count, wavelengths come from the preset). The
# experiment configs (configs/experiments/<task>.yaml, student.architecture.optics) repeat these
# numbers with their justification; tests keep the two in step.
#
# * sensor_pitch_m 3.45 um: Sony IMX250/IMX264 machine-vision sensors.
# * kernel_size_m 0.5 mm sub-apertures, focal_length_m 2.5 mm: F/5. The incoherent PSF is band
#   limited to D / (lambda f) = 1 / (lambda F#): 317 cycles/mm at 630 nm, 376 at 532 nm, above
#   the sensor's Nyquist 1 / (2 p) = 145 cycles/mm, so a 7x7 kernel can hold pixel-scale detail
#   (at F/20, the preset's f = 10 mm, the cutoff 79-100 cycles/mm is below Nyquist and free
#   PSFs with pixel-scale detail could not be realised).
# * kernel_px: the student's PSF stack (segmentation: 3x3 taps at dilation 4 span 9 px).
_OPTICS: dict[str, dict[str, Any]] = {
    "mnist": dict(kernel_size_m=0.5e-3, spacing_m=0.1e-3, focal_length_m=2.5e-3),
    "cifar10": dict(kernel_size_m=0.5e-3, spacing_m=0.1e-3, focal_length_m=2.5e-3),
    "segmentation": dict(
        kernel_size_m=0.5e-3, spacing_m=0.1e-3, focal_length_m=2.5e-3, kernel_px=9
    ),
}
_COMMON = dict(sensor_pitch_m=3.45e-6, aperture_shape="square")
# Phase samples N across a sub-aperture and the material, per task (see the experiment configs).
PHASE_SAMPLES: dict[str, int] = {"mnist": 64, "cifar10": 64, "segmentation": 64}
MATERIAL: dict[str, str] = {"mnist": "SiO2", "cifar10": "SiO2", "segmentation": "SiO2"}


def default_optics(task: str, **overrides: Any) -> OpticsConfig:
    """The physical optical system of `task` for wave-model frontends (SI units).

    `OpticsConfig.preset(task)` (aperture, wavelengths, kernel count via Eq. 1) with the
    sub-aperture, focal length and sensor pitch chosen so that the PSF's band limit supports
    pixel-scale kernels (see `_OPTICS`); `overrides` replace any OpticsConfig field.
    """
    if task not in _OPTICS:
        raise ValueError(f"task must be one of {sorted(_OPTICS)}, got {task!r}")
    return OpticsConfig.preset(task, **{**_COMMON, **_OPTICS[task], **overrides})
