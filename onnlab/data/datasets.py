"""`load_dataset`: one entry point for every task's train / val / test split.

Sources by task (nothing is ever downloaded):

- mnist: `<root>/MNIST/raw/*-ubyte.gz`; without a root, the real MNIST sample bundled in the
  package (`onnlab/data/bundled/mnist_sample.npz`), so demos run on real digits anywhere.
- cifar10: `<root>/CIFAR-10/` folder or `cifar10-jpg.tar.gz`; without a root, a DataError.
- segmentation: `<root>/Carvana/`; without a root, the seeded synthetic shapes.

Parsed/decoded sources are memoised per process, so asking for train, val and test reads the
files once.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from onnlab.data.base import ArrayDataset, limit_positions, split_positions, uint8_to_float
from onnlab.data.paths import resolve_data_root
from onnlab.errors import DataError

TASK_NAMES = ("mnist", "cifar10", "segmentation")
SEGMENTATION_HW = (64, 64)
BUNDLED_MNIST = "mnist_sample.npz"

_SOURCES: dict[tuple, tuple[np.ndarray, ...]] = {}


def bundled_mnist_path() -> Path:
    """Path of the bundled MNIST sample inside the installed package."""
    return Path(str(resources.files("onnlab.data").joinpath("bundled", BUNDLED_MNIST)))


def _mnist_source(root: Path | None, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N,1,28,28), labels, ids) from the IDX files or the bundled sample."""
    key = ("mnist", str(root), source)
    if key not in _SOURCES:
        if root is None:
            path = bundled_mnist_path()
            if not path.is_file():
                raise DataError(
                    f"bundled MNIST sample missing: {path} (regenerate with "
                    "`python -m onnlab.data.bundle --data-root DIR`, or pass --data-root)"
                )
            with np.load(path) as npz:
                images = npz[f"{source}_images"][:, None]
                labels = npz[f"{source}_labels"].astype(np.int64)
                ids = npz[f"{source}_ids"].astype(np.int64)
        else:
            from onnlab.data.mnist import load_mnist_source

            images, labels = load_mnist_source(root, source)
            ids = np.arange(len(labels), dtype=np.int64)
        _SOURCES[key] = (images, labels, ids)
    return _SOURCES[key]  # type: ignore[return-value]


def _cifar_source(root: Path | None, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if root is None:
        raise DataError(
            "CIFAR-10 needs a data root: pass --data-root DIR or set $ONNLAB_DATA to a folder "
            "holding CIFAR-10/cifar10-jpg.tar.gz (nothing is downloaded)"
        )
    key = ("cifar10", str(root), source)
    if key not in _SOURCES:
        from onnlab.data.cifar import load_imagefolder_source

        images, labels, _ = load_imagefolder_source(root, source)
        _SOURCES[key] = (images, labels, np.arange(len(labels), dtype=np.int64))
    return _SOURCES[key]  # type: ignore[return-value]


def _classification(
    task: str, split: str, root: Path | None, seed: int, limit: int | None, val_fraction: float
) -> ArrayDataset:
    loader = _mnist_source if task == "mnist" else _cifar_source
    n_train = len(loader(root, "train")[1])
    n_test = len(loader(root, "test")[1]) if split == "test" else 0
    source, positions = split_positions(n_train, n_test, split, seed, val_fraction)
    positions = limit_positions(positions, split, seed, limit)
    images, labels, ids = loader(root, source)
    return ArrayDataset(
        uint8_to_float(images[positions]),
        torch.from_numpy(labels[positions]),
        ids[positions],
        task=task,
    )


def _segmentation(
    split: str,
    root: Path | None,
    seed: int,
    limit: int | None,
    val_fraction: float,
    image_hw: tuple[int, int],
) -> ArrayDataset:
    if root is None:
        from onnlab.data.segmentation import SYNTHETIC_SIZES, load_synthetic_source

        source, positions = split_positions(
            SYNTHETIC_SIZES["train"], SYNTHETIC_SIZES["test"], split, seed, val_fraction
        )
        positions = limit_positions(positions, split, seed, limit)
        images, masks = load_synthetic_source(source, image_hw, positions)
        ids = positions.astype(np.int64)
    else:
        from onnlab.data.segmentation import load_carvana_source

        key = ("carvana", str(root), "train", image_hw)
        if key not in _SOURCES:
            _SOURCES[key] = load_carvana_source(root, "train", image_hw)
        _, _, _, groups = _SOURCES[key]
        source, positions = split_positions(len(groups), 0, split, seed, val_fraction, groups)
        if source == "test":
            key = ("carvana", str(root), "test", image_hw)
            if key not in _SOURCES:
                _SOURCES[key] = load_carvana_source(root, "test", image_hw)
            positions = np.arange(len(_SOURCES[key][2]))
        positions = limit_positions(positions, split, seed, limit)
        src_images, src_masks, src_ids, _ = _SOURCES[key]
        images, masks, ids = src_images[positions], src_masks[positions], src_ids[positions]
    return ArrayDataset(
        uint8_to_float(images),
        torch.from_numpy(masks.astype(np.float32)),
        ids,
        task="segmentation",
    )


def load_dataset(
    task: str,
    split: str,
    data_root: str | Path | None = None,
    seed: int = 0,
    limit: int | None = None,
    *,
    val_fraction: float = 0.1,
    image_hw: tuple[int, int] | None = None,
) -> ArrayDataset:
    """Load one split of a task's data set as float32 images in [0, 1].

    `data_root` None falls back to `$ONNLAB_DATA`, then to the bundled MNIST sample / synthetic
    segmentation set (CIFAR-10 has no fallback). `seed` decides the train/val carve-out;
    `limit` keeps a seeded random subset (a fixed one for test, so seeds share test images).
    Targets: int64 labels (classification) or float32 masks (N, 1, H, W) (segmentation).
    """
    if task not in TASK_NAMES:
        raise ValueError(f"task must be one of {TASK_NAMES}, got {task!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    root = resolve_data_root(data_root)
    if task == "segmentation":
        return _segmentation(split, root, seed, limit, val_fraction, image_hw or SEGMENTATION_HW)
    return _classification(task, split, root, seed, limit, val_fraction)


def split_size(
    task: str, split: str, data_root: str | Path | None = None, seed: int = 0, *, val_fraction=0.1
) -> int:
    """Images in a whole classification split (no limit): what `onnlab train` trains on."""
    if task not in ("mnist", "cifar10"):
        raise ValueError(f"split_size is for classification tasks, got {task!r}")
    root = resolve_data_root(data_root)
    loader = _mnist_source if task == "mnist" else _cifar_source
    n_train = len(loader(root, "train")[1])
    n_test = len(loader(root, "test")[1]) if split == "test" else 0
    return len(split_positions(n_train, n_test, split, seed, val_fraction)[1])


def clear_cache() -> None:
    """Forget memoised sources (tests that rewrite files between loads need this)."""
    _SOURCES.clear()
