"""Carvana layout (split by car) and the seeded synthetic set."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnlab.data import load_dataset
from onnlab.data.datasets import clear_cache
from onnlab.data.segmentation import car_id
from onnlab.errors import DataError


def test_carvana_split_by_car_and_masks_follow_images(tmp_path, make_carvana):
    make_carvana(tmp_path)
    train = load_dataset("segmentation", "train", tmp_path, seed=0)
    val = load_dataset("segmentation", "val", tmp_path, seed=0)
    test = load_dataset("segmentation", "test", tmp_path)
    assert train.images.shape[1:] == (3, 64, 64) and train.targets.shape[1:] == (1, 64, 64)
    ids = sorted(p.stem for p in (tmp_path / "Carvana" / "train").glob("*.jpg"))

    def cars(ds):
        return {car_id(ids[i]) for i in ds.indices.tolist()}

    assert cars(train) and cars(val) and cars(test)
    assert (
        not cars(train) & cars(test) and not cars(train) & cars(val) and not cars(val) & cars(test)
    )
    assert len(train) + len(val) + len(test) == 12
    for ds in (train, test):
        bright = ds.images.mean(1, keepdim=True) > 0.5
        agreement = (bright == (ds.targets > 0.5)).float().mean().item()
        assert agreement > 0.97 and 0.2 < ds.targets.mean().item() < 0.5


def test_carvana_missing_mask_named(tmp_path, make_carvana):
    make_carvana(tmp_path, cars=3, angles=1)
    victim = tmp_path / "Carvana" / "train_masks" / "car001abcd_01_mask.gif"
    victim.unlink()
    with pytest.raises(DataError, match="car001abcd_01_mask.gif"):
        load_dataset("segmentation", "train", tmp_path)


def test_root_without_carvana_is_an_error(tmp_path):
    with pytest.raises(DataError, match="Carvana"):
        load_dataset("segmentation", "train", tmp_path)


def test_synthetic_set_is_seeded_and_masks_mark_the_textured_shape(monkeypatch):
    monkeypatch.delenv("ONNLAB_DATA", raising=False)
    a = load_dataset("segmentation", "test", None, limit=16)
    b = load_dataset("segmentation", "test", None, limit=16)
    assert bool((a.images == b.images).all()) and bool((a.targets == b.targets).all())
    frac = a.targets.mean((1, 2, 3))
    assert bool((frac > 0.02).all()) and bool((frac < 0.6).all())
    # the target is striped: inside the mask, horizontal or vertical neighbour differences are
    # larger than on the smooth background
    x = a.images.mean(1)
    grad = (x[:, 1:, 1:] - x[:, :-1, 1:]).abs() + (x[:, 1:, 1:] - x[:, 1:, :-1]).abs()
    m = a.targets[:, 0, 1:, 1:] > 0.5
    assert grad[m].mean() > 2 * grad[~m].mean()
    tr = load_dataset("segmentation", "train", None, seed=1, limit=8)
    va = load_dataset("segmentation", "val", None, seed=1, limit=8)
    assert not set(tr.indices.tolist()) & set(va.indices.tolist())


def test_carvana_cache_reloads_an_edited_mask(tmp_path, make_carvana):
    """The decoded-set cache key covers train_masks/: a mask edited in place is reloaded."""
    import os

    make_carvana(tmp_path, cars=3, angles=1)
    before = load_dataset("segmentation", "train", tmp_path, seed=0)
    ids = sorted(p.stem for p in (tmp_path / "Carvana" / "train").glob("*.jpg"))
    first = ids[int(before.indices[0])]
    mask = tmp_path / "Carvana" / "train_masks" / f"{first}_mask.gif"
    empty = Image.fromarray(np.zeros((96, 128), dtype=np.uint8), mode="L").convert("P")
    empty.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    stat = mask.stat()
    empty.save(mask)
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later edit
    clear_cache()  # the process-level memo; the on-disk cache must notice by itself
    after = load_dataset("segmentation", "train", tmp_path, seed=0)
    assert before.targets[0].sum() > 0 and after.targets[0].sum() == 0
    assert len(list((tmp_path / "cache").glob("carvana-train-*.npz"))) == 2  # new key


def test_teachers_are_registered_per_dataset(tmp_path, monkeypatch, make_carvana):
    """A Carvana teacher must not replace the synthetic-set one (and vice versa)."""
    from onnlab.training.runner import registered_teacher_path

    monkeypatch.delenv("ONNLAB_DATA", raising=False)
    make_carvana(tmp_path / "data", cars=2, angles=1)
    synthetic = registered_teacher_path("segmentation")
    carvana = registered_teacher_path("segmentation", tmp_path / "data")
    assert synthetic != carvana
    assert synthetic.name == "synthetic.pt" and carvana.name == "carvana.pt"
