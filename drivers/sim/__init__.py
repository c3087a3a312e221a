"""Simulated twins of the bench devices, built on onnlab.optics."""
