"""Calibration (layer 4): procedures that measure the built system, fits and artifacts.

Entry points: `calibration.runner.run_calibration` (all steps on a `BenchSetup`),
`calibration.setup.setup_from_devices` (a setup from a bench config and its open devices),
`calibration.artifact.CalibrationArtifact` (the versioned, self-checking result file) and
`calibration.twin.DigitalTwin` (predict frames / extract features with it).
"""
