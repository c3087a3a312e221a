"""Benchmarks: each module provides run(quick, seed) -> dict (see onnlab.commands.bench)."""
