"""Calibration procedures: each drives the bench through the device protocols, fits, checks,
and returns a typed result with a residual, or refuses with a `CalibrationError` that says
what to change (exposure, focus, pattern, alignment)."""
