"""ImageFolder (CIFAR-10 layout) from a folder or a .tar.gz, extracted and decoded once."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnlab.data import cifar, load_dataset
from onnlab.data.datasets import clear_cache
from onnlab.errors import DataError

CLASSES = ("truck", "airplane", "cat")  # deliberately not alphabetical on disk creation


def make_folder(base: Path, per_class: int = 3) -> dict:
    """train/test/<class>/NNNN.png with per-class constant colours (PNG: lossless)."""
    pixels = {}
    for split in ("train", "test"):
        for ci, name in enumerate(CLASSES):
            folder = base / split / name
            folder.mkdir(parents=True)
            for j in range(per_class):
                arr = np.full((8, 8, 3), 10 * ci + j, dtype=np.uint8)
                arr[0, 0] = (200, 100, 50)
                Image.fromarray(arr).save(folder / f"{j:04d}.png")
                pixels[(split, name, j)] = arr
    return pixels


def test_tar_gz_labels_alphabetical_and_decoded_once(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_folder(src)
    root = tmp_path / "root"
    (root / "CIFAR-10").mkdir(parents=True)
    with tarfile.open(root / "CIFAR-10" / "cifar10-jpg.tar.gz", "w:gz") as tar:
        tar.add(src / "train", arcname="train")
        tar.add(src / "test", arcname="test")
    clear_cache()
    test = load_dataset("cifar10", "test", root)
    assert test.images.shape == (9, 3, 8, 8)
    names = sorted(CLASSES)  # airplane=0, cat=1, truck=2
    for img, label in zip(test.images, test.targets, strict=True):
        value = round(img[1, 4, 4].item() * 255)  # 10*creation_index + j
        assert names[int(label)] == CLASSES[value // 10]
        assert [round(v * 255) for v in img[:, 0, 0].tolist()] == [200, 100, 50]
    # the second load (new process-level cache) must use the cached .npz, not decode again
    clear_cache()
    monkeypatch.setattr(cifar, "decode_folder", lambda *_: pytest.fail("decoded twice"))
    again = load_dataset("cifar10", "test", root)
    assert bool((again.images == test.images).all())
    train = load_dataset("cifar10", "train", root)
    val = load_dataset("cifar10", "val", root)
    assert len(train) + len(val) == 9 and len(val) >= 1


def test_plain_folder_layout(tmp_path):
    make_folder(tmp_path / "CIFAR-10")
    clear_cache()
    ds = load_dataset("cifar10", "test", tmp_path)
    assert len(ds) == 9 and sorted(set(ds.targets.tolist())) == [0, 1, 2]


def test_missing_archive_and_missing_root_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("ONNLAB_DATA", raising=False)
    with pytest.raises(DataError, match="cifar10-jpg.tar.gz"):
        load_dataset("cifar10", "train", tmp_path)
    with pytest.raises(DataError, match="--data-root"):
        load_dataset("cifar10", "train", None)


def test_corrupt_image_names_the_file(tmp_path):
    make_folder(tmp_path / "CIFAR-10", per_class=1)
    bad = tmp_path / "CIFAR-10" / "test" / "cat" / "0000.png"
    bad.write_bytes(b"not a png")
    clear_cache()
    with pytest.raises(DataError, match="0000.png"):
        load_dataset("cifar10", "test", tmp_path)


def test_real_cifar_archive_listing(shared_data_root):
    """The shared archive has the documented layout (listing only: decoding takes minutes)."""
    archive = shared_data_root / "CIFAR-10" / "cifar10-jpg.tar.gz"
    with tarfile.open(archive) as tar:
        first = [next(iter(tar)).name for _ in range(1)]
    assert first[0].startswith(("train", "test", "./"))
