"""onnlab: hybrid optical neural networks from design to a working lab bench."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onnlab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
