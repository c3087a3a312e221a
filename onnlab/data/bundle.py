"""Regenerate the real-MNIST sample bundled in the package.

    python -m onnlab.data.bundle --data-root /path/with/MNIST/raw [--train 2000 --test 1000]

The sample is a class-balanced, seeded draw from the original IDX files, stored as uint8 with
the original indices (`*_ids`), so ids in a capture store made from the sample refer to the
same digits as in full MNIST. np.savez_compressed keeps it near 1 MB.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from onnlab.data.datasets import bundled_mnist_path
from onnlab.data.mnist import load_mnist_source
from onnlab.data.paths import resolve_data_root
from onnlab.errors import DataError

SAMPLE_SEED = 0


def _balanced_pick(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices, as equal per class as possible, in original file order."""
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(10)]
    quota = [n // 10 + (1 if c < n % 10 else 0) for c in range(10)]
    picked = np.concatenate([idx[:q] for idx, q in zip(per_class, quota, strict=True)])
    return np.sort(picked)


def make_bundle(
    data_root: str | Path | None,
    out: str | Path | None = None,
    n_train: int = 2000,
    n_test: int = 1000,
) -> Path:
    """Write the compressed sample and return its path."""
    root = resolve_data_root(data_root)
    if root is None:
        raise DataError("pass --data-root (or set $ONNLAB_DATA) to a folder holding MNIST/raw/")
    rng = np.random.default_rng(SAMPLE_SEED)
    arrays: dict[str, np.ndarray] = {}
    for source, n in (("train", n_train), ("test", n_test)):
        images, labels = load_mnist_source(root, source)
        ids = _balanced_pick(labels, n, rng)
        arrays[f"{source}_images"] = images[ids, 0]
        arrays[f"{source}_labels"] = labels[ids].astype(np.uint8)
        arrays[f"{source}_ids"] = ids.astype(np.int32)
    path = Path(out) if out is not None else bundled_mnist_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw/")
    parser.add_argument("--out", default=None, help="output .npz (default: the package file)")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args(argv)
    path = make_bundle(args.data_root, args.out, args.train, args.test)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
