"""CIFAR-10 (or any small ImageFolder set) from a folder or a `.tar.gz` of class folders.

Layout: `train|test/<class>/*.jpg|png`; label = alphabetical index of the class folder (the
order of the original CIFAR-10 release). Decoding 60,000 JPEGs takes minutes on two cores, so
the archive is extracted once into `cache_root()` and the decoded pixels are cached as one
uint8 `.npz` per source split, written atomically (temp file + rename) so a killed process
never leaves a half cache behind. The cache key includes the archive's size and mtime.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import numpy as np

from onnlab.data.paths import cache_root
from onnlab.errors import DataError

ARCHIVE_NAMES = ("cifar10-jpg.tar.gz", "cifar10.tar.gz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _locate(root: Path) -> Path:
    """The CIFAR-10 folder or archive under `root` (folder wins: nothing to extract)."""
    base = Path(root) / "CIFAR-10"
    if (base / "train").is_dir() and (base / "test").is_dir():
        return base
    for name in ARCHIVE_NAMES:
        if (base / name).is_file():
            return base / name
    raise DataError(
        f"CIFAR-10 not found: expected {base / ARCHIVE_NAMES[0]} or {base}/train|test/<class>/ "
        "(nothing is downloaded)"
    )


def _key(path: Path) -> str:
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _checked_members(tar: tarfile.TarFile, dest: Path, archive: Path) -> list[tarfile.TarInfo]:
    """Every member, checked by us (not only by `filter="data"`, which old Pythons lack):
    regular files and folders only, relative names that stay inside `dest` after resolving."""
    root = dest.resolve()
    members = tar.getmembers()
    for m in members:
        if not (m.isfile() or m.isdir()):
            kind = "link" if (m.issym() or m.islnk()) else "special file"
            raise DataError(f"refusing {archive}: member {m.name!r} is a {kind}")
        name = Path(m.name)
        target = (root / name).resolve()
        if name.is_absolute() or ".." in name.parts or not target.is_relative_to(root):
            raise DataError(f"refusing {archive}: member {m.name!r} would land outside {dest}")
    return members


def _extract_once(archive: Path) -> Path:
    """Extract the archive into the cache (once; a marker file says it completed)."""
    target = cache_root() / f"imagefolder-{_key(archive)}"
    marker = target / ".complete"
    if marker.is_file():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _checked_members(tar, tmp, archive)
            # the "data" filter too where this Python has it (it also drops odd mode bits)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **kwargs)
    except DataError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}") from exc
    (tmp / ".complete").write_text("ok\n")
    if target.exists():  # another process won the race; use its copy
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def _folder_root(tree: Path) -> Path:
    """Accept archives with or without a single top-level folder around train/test."""
    if (tree / "train").is_dir():
        return tree
    subdirs = [p for p in tree.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir():
        return subdirs[0]
    raise DataError(f"{tree} has no train/ folder of class folders")


def decode_folder(split_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode `split_dir/<class>/*` into uint8 (N, C, H, W) images and int64 labels."""
    from PIL import Image

    if not split_dir.is_dir():
        raise DataError(f"image folder missing: {split_dir}")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{split_dir} holds no class folders")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        for file in files:
            try:
                with Image.open(file) as img:
                    images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
            except OSError as exc:
                raise DataError(f"cannot decode image {file}: {exc}") from exc
            labels.append(label)
    if not images:
        raise DataError(f"{split_dir} holds no .jpg/.png images")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(f"{split_dir}: images differ in size {sorted(shapes)[:3]}")
    stacked = np.stack(images).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(stacked), np.asarray(labels, dtype=np.int64), classes


def load_imagefolder_source(root: Path, source: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 (N, 3, H, W), labels and class names of CIFAR-10's train or test part."""
    location = _locate(root)
    cache_file = cache_root() / f"cifar10-{source}-{_key(location)}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file) as npz:
                return npz["images"], npz["labels"], [str(c) for c in npz["classes"]]
        except (OSError, KeyError, ValueError):
            cache_file.unlink(missing_ok=True)  # corrupt cache: decode again
    tree = _folder_root(_extract_once(location) if location.is_file() else location)
    images, labels, classes = decode_folder(tree / source)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(cache_file.stem + f".tmp{os.getpid()}.npz")
    np.savez(tmp, images=images, labels=labels, classes=np.asarray(classes))
    os.replace(tmp, cache_file)
    return images, labels, classes
