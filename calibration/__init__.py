"""Calibration (layer 4): procedures that measure the built system, fits and artifacts."""
