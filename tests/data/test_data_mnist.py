"""MNIST IDX parsing, splits and the bundled real sample."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from onnlab.data import load_dataset
from onnlab.data.datasets import bundled_mnist_path, clear_cache
from onnlab.data.mnist import IMAGE_MAGIC, read_idx
from onnlab.errors import DataError


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def make_mnist(root: Path, n_train: int = 40, n_test: int = 10, seed: int = 0) -> dict:
    """Tiny IDX .gz files in the torchvision layout; returns the arrays written."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28))
        labels = np.arange(n) % 10
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
        out[prefix] = (images, labels)
    clear_cache()
    return out


def test_idx_files_load_exactly_with_disjoint_deterministic_splits(tmp_path):
    written = make_mnist(tmp_path)
    train = load_dataset("mnist", "train", tmp_path, seed=3)
    val = load_dataset("mnist", "val", tmp_path, seed=3)
    test = load_dataset("mnist", "test", tmp_path)
    assert (len(train), len(val), len(test)) == (36, 4, 10)
    assert train.images.dtype.is_floating_point and train.images.shape[1:] == (1, 28, 28)
    # pixel values and labels are those of the file, addressed by the stable ids
    images, labels = written["train"]
    for ds in (train, val):
        ids = ds.indices.numpy()
        np.testing.assert_allclose(ds.images[:, 0].numpy() * 255, images[ids], atol=1e-4)
        np.testing.assert_array_equal(ds.targets.numpy(), labels[ids])
    assert not set(train.indices.tolist()) & set(val.indices.tolist())
    assert set(train.indices.tolist()) | set(val.indices.tolist()) == set(range(40))
    again = load_dataset("mnist", "val", tmp_path, seed=3)
    other = load_dataset("mnist", "val", tmp_path, seed=4)
    assert again.indices.tolist() == val.indices.tolist()
    assert other.indices.tolist() != val.indices.tolist()
    assert len(load_dataset("mnist", "train", tmp_path, limit=5)) == 5


def test_missing_file_error_names_it(tmp_path):
    make_mnist(tmp_path)
    victim = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    victim.unlink()
    clear_cache()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", "test", tmp_path)


def test_bad_magic_and_truncation_are_data_errors_naming_the_file(tmp_path):
    bad = tmp_path / "x-images-idx3-ubyte.gz"
    _write_idx(bad, np.zeros((2, 28, 28)), 2049)  # label magic on an image file
    with pytest.raises(DataError, match="x-images-idx3-ubyte.gz.*magic"):
        read_idx(bad, IMAGE_MAGIC)
    with gzip.open(bad, "wb") as fh:
        fh.write((2051).to_bytes(4, "big") + (5).to_bytes(4, "big") * 3 + b"\0" * 10)
    with pytest.raises(DataError, match="x-images-idx3-ubyte.gz"):
        read_idx(bad, IMAGE_MAGIC)


def test_missing_root_is_an_error_not_a_silent_fallback(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_dataset("mnist", "train", tmp_path / "nope")


def test_bundled_sample_is_real_balanced_mnist():
    path = bundled_mnist_path()
    assert path.is_file() and path.stat().st_size < 3e6
    test = load_dataset("mnist", "test")
    train = load_dataset("mnist", "train")
    assert len(test) == 1000 and np.bincount(test.targets.numpy()).tolist() == [100] * 10
    # real digits: dark background, ~13 % ink (random noise would average 0.5)
    assert 0.10 < train.images.mean().item() < 0.16
    assert (train.images[:, :, 0, :] == 0).float().mean() > 0.95  # empty top row


def test_bundled_ids_point_at_the_same_real_digits(shared_data_root):
    clear_cache()
    full = load_dataset("mnist", "test", shared_data_root)
    sample = load_dataset("mnist", "test")
    assert len(full) == 10_000
    ids = sample.indices[:50]
    assert bool((full.images[ids] == sample.images[:50]).all())
    assert bool((full.targets[ids] == sample.targets[:50]).all())


def test_full_size_training_sets_keep_the_standard_5000_image_validation_split():
    """55k/5k (MNIST) and 45k/5k (CIFAR-10): 10 % of the training set, at most 5,000."""
    from onnlab.data.base import split_positions

    for n_source, n_train in ((60000, 55000), (50000, 45000), (5000, 4500)):
        _, train = split_positions(n_source, 0, "train", seed=3)
        _, val = split_positions(n_source, 0, "val", seed=3)
        assert (len(train), len(val)) == (n_train, n_source - n_train)
        assert len(np.intersect1d(train, val)) == 0
