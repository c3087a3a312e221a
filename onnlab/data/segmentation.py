"""Binary segmentation data: the Carvana layout, and a seeded synthetic set.

Carvana (`<root>/Carvana/train/<id>.jpg` + `train_masks/<id>_mask.gif`, id = `<car>_<NN>`)
photographs each car from 16 angles; splitting by image would put the same car in train and
test and inflate mIoU, so every split here is by car. Images are resized once (JPEG draft mode
makes that fast) and cached as a uint8 `.npz`.

The synthetic set stands in where Carvana may not be redistributed: one textured shape (the
target) on a cluttered background with flat-coloured distractor shapes, so a model must use
texture and shape, not colour alone. Sample `i` of a split is generated from its own seeded
stream, so ids are stable and `limit` only generates what is used.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from onnlab.data.paths import cache_root
from onnlab.errors import DataError

SYNTHETIC_SIZES = {"train": 2048, "test": 512}
SYNTHETIC_SEED = 1729
CARVANA_TEST_FRACTION = 0.2
_CAR_ID = re.compile(r"^(.*)_\d+$")


# ----------------------------------------------------------------------------- synthetic


def _shape_mask(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, scale: float
) -> np.ndarray:
    """A random ellipse, rectangle or triangle (rotated), as a boolean mask."""
    h, w = yy.shape
    cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    ry, rx = rng.uniform(0.5, 1.0, size=2) * scale * min(h, w) / 2
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    kind = rng.integers(3)
    if kind == 0:
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    if kind == 1:
        return (np.abs(u) <= rx) & (np.abs(v) <= ry)
    return (v >= -ry) & (np.abs(u) <= rx * (ry - v) / (2 * ry))


def synthetic_sample(
    index: int, split: str, image_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Image uint8 (3, H, W) and mask uint8 (1, H, W) of synthetic sample `index`."""
    rng = np.random.default_rng([SYNTHETIC_SEED, 0 if split == "train" else 1, index])
    h, w = image_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # Smooth clutter: a few random low-frequency gratings per colour channel.
    img = np.zeros((3, h, w))
    for c in range(3):
        for _ in range(3):
            fy, fx = rng.uniform(-0.08, 0.08, size=2)  # smoother than the target stripes
            img[c] += rng.uniform(0.05, 0.2) * np.sin(
                2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 6.3)
            )
        img[c] += rng.uniform(0.2, 0.6)
    # Flat-coloured distractors (same palette as the target, no texture).
    for _ in range(rng.integers(1, 4)):
        m = _shape_mask(rng, yy, xx, scale=rng.uniform(0.15, 0.35))
        img[:, m] = rng.uniform(0.0, 1.0, size=(3, 1))
    # The target: a larger shape filled with an oriented stripe texture.
    mask = _shape_mask(rng, yy, xx, scale=rng.uniform(0.35, 0.7))
    theta, period = rng.uniform(0, np.pi), rng.uniform(3.0, 6.0)
    stripes = 0.5 + 0.5 * np.sign(
        np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    )
    colour_a, colour_b = rng.uniform(0, 1, size=(2, 3, 1))
    texture = colour_a * stripes[mask] + colour_b * (1 - stripes[mask])
    img[:, mask] = texture
    img += rng.normal(0, 0.03, size=img.shape)
    image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, mask[None].astype(np.uint8)


def load_synthetic_source(
    source: str, image_hw: tuple[int, int], positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic samples at `positions` of the 'train' or 'test' source."""
    images = np.empty((len(positions), 3, *image_hw), dtype=np.uint8)
    masks = np.empty((len(positions), 1, *image_hw), dtype=np.uint8)
    for row, index in enumerate(positions):
        images[row], masks[row] = synthetic_sample(int(index), source, image_hw)
    return images, masks


# ----------------------------------------------------------------------------- Carvana


def carvana_dir(root: Path) -> Path | None:
    """`<root>/Carvana` (or `carvana`) when it holds train/ and train_masks/, else None."""
    for name in ("Carvana", "carvana"):
        base = Path(root) / name
        if (base / "train").is_dir():
            return base
    return None


def car_id(image_id: str) -> str:
    """`0cdf5b5d0ce1_01` → `0cdf5b5d0ce1`: the car photographed from several angles."""
    match = _CAR_ID.match(image_id)
    return match.group(1) if match else image_id


def _is_test_car(car: str) -> bool:
    """Fixed, seed-independent test membership from a hash, so the test set never moves."""
    digest = hashlib.sha1(car.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < CARVANA_TEST_FRACTION


def _decode_carvana(
    base: Path, ids: list[str], image_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    h, w = image_hw
    images = np.empty((len(ids), 3, h, w), dtype=np.uint8)
    masks = np.empty((len(ids), 1, h, w), dtype=np.uint8)
    for row, image_id in enumerate(ids):
        image_path = base / "train" / f"{image_id}.jpg"
        mask_path = base / "train_masks" / f"{image_id}_mask.gif"
        if not mask_path.is_file():
            raise DataError(f"Carvana mask missing: {mask_path}")
        try:
            with Image.open(image_path) as img:
                img.draft("RGB", (w * 2, h * 2))  # decode JPEG at reduced size: ~10x faster
                images[row] = np.asarray(
                    img.convert("RGB").resize((w, h), Image.BILINEAR)
                ).transpose(2, 0, 1)
            with Image.open(mask_path) as m:
                small = np.asarray(m.convert("L").resize((w, h), Image.BILINEAR))
                masks[row, 0] = small >= 128 if small.max() > 1 else small > 0
        except OSError as exc:
            raise DataError(f"cannot decode Carvana file of {image_id} in {base}: {exc}") from exc
    return images, masks


def _cache_key(base: Path, n_images: int) -> str:
    """Content key of a Carvana folder: images and masks (an edited mask must be reloaded).

    Folder mtimes change when files are added, removed or renamed; a mask edited in place
    changes only its own mtime, so the newest mask mtime and the masks' total size count too.
    """
    masks = [p.stat() for p in (base / "train_masks").glob("*_mask.gif")]
    parts = [
        str(base.resolve()),
        str(n_images),
        str((base / "train").stat().st_mtime_ns),
        str((base / "train_masks").stat().st_mtime_ns),
        str(len(masks)),
        str(max((s.st_mtime_ns for s in masks), default=0)),
        str(sum(s.st_size for s in masks)),
    ]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()


def load_carvana_source(
    root: Path, source: str, image_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images, masks, stable ids and car-group labels of Carvana's 'train' or 'test' source.

    Ids are positions in the sorted list of all image ids, so they are stable across splits.
    """
    base = carvana_dir(root)
    if base is None:
        raise DataError(
            f"Carvana not found: expected {Path(root) / 'Carvana' / 'train'}/<id>.jpg and "
            f"{Path(root) / 'Carvana' / 'train_masks'}/<id>_mask.gif (omit --data-root and unset "
            "$ONNLAB_DATA for the synthetic set)"
        )
    if not (base / "train_masks").is_dir():
        raise DataError(f"Carvana masks folder missing: {base / 'train_masks'}")
    all_ids = sorted(p.stem for p in (base / "train").glob("*.jpg"))
    if not all_ids:
        raise DataError(f"no .jpg images in {base / 'train'}")
    cars = [car_id(i) for i in all_ids]
    test_cars = {car for car in cars if _is_test_car(car)}
    if not test_cars or len(test_cars) == len(set(cars)):  # tiny sets: keep both sides non-empty
        test_cars = {cars[-1]}
    keep = [i for i, car in enumerate(cars) if (car in test_cars) == (source == "test")]
    if not keep:
        raise DataError(f"{base / 'train'} holds a single car: cannot split train from test")
    key = _cache_key(base, len(all_ids))
    cache = cache_root() / f"carvana-{source}-{image_hw[0]}x{image_hw[1]}-{key[:12]}.npz"
    if cache.is_file():
        with np.load(cache) as npz:
            images, masks = npz["images"], npz["masks"]
    else:
        images, masks = _decode_carvana(base, [all_ids[i] for i in keep], image_hw)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + f".tmp{os.getpid()}.npz")
        np.savez(tmp, images=images, masks=masks)
        os.replace(tmp, cache)
    groups = np.unique([cars[i] for i in keep], return_inverse=True)[1]
    return images, masks, np.asarray(keep, dtype=np.int64), groups.astype(np.int64)
