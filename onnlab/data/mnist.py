"""MNIST from the standard IDX files (`<root>/MNIST/raw/*-ubyte.gz`), parsed with numpy.

The IDX format is tiny (magic number, dimension sizes, raw bytes), so parsing it here keeps
torchvision out of the dependencies and lets every failure name the file that caused it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from onnlab.errors import DataError

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABEL_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension


def _find(raw_dir: Path, stem: str) -> Path:
    """The `.gz` file, or the already-unpacked one (torchvision leaves both)."""
    for candidate in (raw_dir / f"{stem}.gz", raw_dir / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"MNIST file missing: {raw_dir / (stem + '.gz')} (nothing is downloaded)")


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read one IDX file (gzip or plain) into a uint8 array; DataError names a bad file."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as exc:
        raise DataError(f"MNIST file missing: {path}") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if len(data) < 4:
        raise DataError(f"{path} is not an IDX file (only {len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DataError(f"{path}: IDX magic number {magic}, expected {expected_magic}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape))
    if len(data) - header != count:
        raise DataError(f"{path}: {len(data) - header} data bytes, header promises {count}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_mnist_source(root: Path, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 1, 28, 28) and labels int64 (N,) of the 'train' or 'test' file pair."""
    raw_dir = Path(root) / "MNIST" / "raw"
    image_stem, label_stem = FILES[source]
    images = read_idx(_find(raw_dir, image_stem), IMAGE_MAGIC)
    labels = read_idx(_find(raw_dir, label_stem), LABEL_MAGIC).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"MNIST {source} files in {raw_dir} disagree: images {images.shape}, labels "
            f"{labels.shape}"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{raw_dir / label_stem}: label {labels.max()} is not a digit")
    return images[:, None], labels
