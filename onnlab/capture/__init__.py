"""Capture: crash-safe HDF5 capture stores and the resumable capture loop (issue 7).

- `onnlab.capture.store.CaptureStore` / `onnlab.capture.schema.CaptureSpec`: one append-only
  HDF5 file per run; format and commit protocol in their module docstrings.
- `onnlab.capture.runner`: seeded index selection, auto-exposure, bounded retries,
  `run_capture`.
- `onnlab.capture.session.capture_dataset`: dataset + devices (+ calibration) -> store.
- `onnlab.capture.calibrated`: the calibration artifact as frame -> feature tiles and
  image -> display pattern.

Importing this package is cheap (numpy + h5py; no torch).
"""

from onnlab.capture.runner import (
    CaptureSummary,
    ExposurePolicy,
    RetryPolicy,
    auto_exposure,
    run_capture,
    select_indices,
)
from onnlab.capture.schema import CaptureSpec
from onnlab.capture.store import CaptureData, CaptureStore

__all__ = [
    "CaptureData",
    "CaptureSpec",
    "CaptureStore",
    "CaptureSummary",
    "ExposurePolicy",
    "RetryPolicy",
    "auto_exposure",
    "run_capture",
    "select_indices",
]
