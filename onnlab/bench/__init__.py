"""Benchmarks: each module provides run(quick, seed) -> dict (see onnlab.commands.bench).

`design` also takes `checkpoint` (a free student to benchmark instead of training one).
"""
