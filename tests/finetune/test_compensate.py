"""Backend-only compensation: the optics stay bit-identical; captures pair with raw images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onnlab.capture.schema import CaptureSpec
from onnlab.capture.store import CaptureStore
from onnlab.data.base import ArrayDataset
from onnlab.errors import CaptureError
from onnlab.finetune.compensate import (
    captured_dataset,
    compensate,
    finetune_backend,
    optical_fingerprint,
    to_backend_features,
)
from onnlab.models.zoo import build_student, build_teacher
from onnlab.training.config import TrainConfig


def _raw(n: int = 64, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 28, 28, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ArrayDataset(images, labels, torch.arange(500, 500 + n), task="mnist")


def _store(path: Path, student, raw: ArrayDataset, labels=None) -> Path:
    with torch.no_grad():
        feats = student.frontend(raw.images) * 1.3  # an as-built gain error
    spec = CaptureSpec(
        raw.indices.numpy(),
        "features",
        tuple(feats.shape[1:]),
        "float32",
        meta={"dataset": "mnist", "split": "train"},
    )
    labels = raw.targets.numpy() if labels is None else labels
    with CaptureStore.open(path, spec, chunk_size=16) as store:
        for k, index in enumerate(raw.indices.tolist()):
            store.append(feats[k].numpy(), index=index, target=int(labels[k]))
        store.finalize()
    return path


def test_captured_dataset_pairs_features_with_raw_images_by_index(tmp_path: Path) -> None:
    student = build_student("mnist")
    raw = _raw()
    path = _store(tmp_path / "cap.h5", student, raw)
    shuffled = raw.subset(torch.randperm(len(raw), generator=torch.Generator().manual_seed(1)))
    ds = captured_dataset(path, shuffled, student.frontend, task="mnist")
    assert ds.images.shape == (64, 8, 28, 28)
    for k in (0, 17, 63):
        pos = int((raw.indices == ds.indices[k]).nonzero())
        assert torch.equal(ds.teacher_images[k], raw.images[pos])
        assert ds.targets[k] == raw.targets[pos]
    with pytest.raises(CaptureError, match="labels differ"):
        captured_dataset(
            _store(tmp_path / "bad.h5", student, raw, labels=(raw.targets.numpy() + 1) % 10),
            raw,
            student.frontend,
        )
    with pytest.raises(CaptureError, match="not in the dataset"):
        captured_dataset(path, raw.subset(range(10)), student.frontend)


def test_pseudo_negative_pairs_are_subtracted_digitally() -> None:
    """The bench captures every physical PSF; the backend reads the K/2 differences."""
    from onnlab.optics import optical_conv2d

    student = build_student("mnist", pseudo_negative=True)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        per_psf = optical_conv2d(x, student.frontend.psfs())
        assert per_psf.shape[1] == 16
        torch.testing.assert_close(
            to_backend_features(student.frontend, per_psf), student.frontend(x)
        )


def test_backend_only_ntkd_leaves_the_optics_bit_identical(tmp_path: Path) -> None:
    torch.manual_seed(0)
    student, teacher = build_student("mnist"), build_teacher("mnist").eval()
    raw = _raw(48)
    student.initialise(raw.images)
    path = _store(tmp_path / "cap.h5", student, raw)
    data = captured_dataset(path, raw, student.frontend, task="mnist")
    psfs_before = student.frontend.psfs().detach().clone()
    state_before = {k: v.clone() for k, v in student.frontend.state_dict().items()}
    print_before = optical_fingerprint(student)
    backend_before = [p.detach().clone() for p in student.backend.parameters()]
    config = TrainConfig(task="mnist", epochs=2, batch_size=16, lr=1e-2, progress=False)
    tuned, history = finetune_backend(
        student,
        "ntkd",
        data,
        teacher=teacher,
        task="mnist",
        train_config=config,
        run_dir=tmp_path / "ft",
    )
    assert history["epochs"] and "ntkd" in history["epochs"][0]["train"]
    assert optical_fingerprint(student) == print_before
    assert torch.equal(student.frontend.psfs(), psfs_before)
    for k, v in student.frontend.state_dict().items():
        assert torch.equal(v, state_before[k]), k
    # the original backend is untouched; the tuned copy moved
    assert all(
        torch.equal(a, b) for a, b in zip(student.backend.parameters(), backend_before, strict=True)
    )
    assert any(
        not torch.equal(a, b) for a, b in zip(tuned.parameters(), backend_before, strict=True)
    )
    results = compensate(
        student, teacher, data, data, task="mnist", train_config=config, run_dir=tmp_path / "all"
    )
    assert set(results) >= {"no_compensation", "end_to_end", "ntkd", "optics_sha256"}
    assert results["optics_sha256"] == print_before
    assert all(
        0.0 <= results[m]["accuracy"] <= 1.0 for m in ("no_compensation", "end_to_end", "ntkd")
    )
    assert not any(p.requires_grad for p in student.frontend.parameters())


def test_holdout_split_is_seeded_disjoint_and_complete() -> None:
    from onnlab.finetune.compensate import holdout_split

    data = ArrayDataset(torch.randn(50, 1, 4, 4), torch.arange(50) % 10, torch.arange(100, 150))
    fit, val = holdout_split(data, 0.1, seed=3)
    assert len(val) == 5 and len(fit) == 45
    ids = set(fit.indices.tolist()) | set(val.indices.tolist())
    assert ids == set(range(100, 150))  # nothing lost, nothing in both
    again = holdout_split(data, 0.1, seed=3)[1]
    assert torch.equal(again.indices, val.indices)
    assert not torch.equal(holdout_split(data, 0.1, seed=4)[1].indices, val.indices)
    assert holdout_split(data, 0.0, seed=3) == (data, None)
    with pytest.raises(ValueError, match="no usable split"):
        holdout_split(data.subset(range(2)), 0.4, seed=0)
