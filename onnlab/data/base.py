"""In-memory datasets and deterministic splits.

Every data set onnlab uses fits in memory (MNIST, CIFAR-10, a resized Carvana subset, the
synthetic shapes), so one tensor-backed class serves them all: the training loop slices whole
batches out of `.images` instead of collating single items, which is several times faster on
a CPU than a `DataLoader`. `.indices` are stable ids of each sample inside its source split
(the position in the original training or test file), so a capture store keyed by them stays
valid whatever seed carved the validation set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.1
# At most this many validation samples: the standard 55k/5k (MNIST) and 45k/5k (CIFAR-10)
# carve-outs; 5,000 samples already pin an accuracy to +-0.4 points (binomial, 2 sigma).
MAX_VAL_SAMPLES = 5000
TEST_SUBSET_SEED = 20_250_808  # fixed: limited test subsets must not change with the run seed


class ArrayDataset(torch.utils.data.Dataset):
    """Images, targets and stable ids, all as tensors of equal length.

    `teacher_images` is optional: after fabrication the student input is a captured feature
    stack while the teacher still needs the raw image of the same sample, so both travel
    together and the loop can fill `batch["x_teacher"]`.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        targets: torch.Tensor | np.ndarray,
        indices: torch.Tensor | np.ndarray | Sequence[int] | None = None,
        *,
        teacher_images: torch.Tensor | np.ndarray | None = None,
        task: str | None = None,
    ) -> None:
        self.images = torch.as_tensor(images)
        self.targets = torch.as_tensor(targets)
        n = self.images.shape[0]
        if indices is None:
            indices = np.arange(n)
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        self.teacher_images = None if teacher_images is None else torch.as_tensor(teacher_images)
        self.task = task
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        for name, value in (
            ("targets", self.targets),
            ("indices", self.indices),
            ("teacher_images", self.teacher_images),
        ):
            if value is not None and value.shape[0] != n:
                raise ValueError(f"{name} has {value.shape[0]} entries, images have {n}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.targets[i]

    def subset(self, positions: torch.Tensor | np.ndarray | Sequence[int]) -> ArrayDataset:
        """A new dataset holding the given positions (not ids); ids travel along."""
        pos = torch.as_tensor(np.asarray(positions), dtype=torch.int64)
        return ArrayDataset(
            self.images[pos],
            self.targets[pos],
            self.indices[pos],
            teacher_images=None if self.teacher_images is None else self.teacher_images[pos],
            task=self.task,
        )

    def to(self, device: torch.device | str) -> ArrayDataset:
        """Copy onto a device (once, so batches need no host-device transfer)."""
        return ArrayDataset(
            self.images.to(device),
            self.targets.to(device),
            self.indices,
            teacher_images=None if self.teacher_images is None else self.teacher_images.to(device),
            task=self.task,
        )

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(task={self.task!r}, n={len(self)}, "
            f"images={tuple(self.images.shape)}, targets={tuple(self.targets.shape)})"
        )


def split_positions(
    n_train_source: int,
    n_test_source: int,
    split: str,
    seed: int,
    val_fraction: float = VAL_FRACTION,
    groups: np.ndarray | None = None,
) -> tuple[str, np.ndarray]:
    """Which source ('train' or 'test') and which positions a split uses.

    Validation is carved out of the source training set by a seeded permutation, so train and
    val never overlap and the same seed always gives the same split: ``val_fraction`` of it,
    at most ``MAX_VAL_SAMPLES`` (full MNIST: 55,000 / 5,000; CIFAR-10: 45,000 / 5,000).
    With `groups` (one label per training sample, e.g. the car of a Carvana photo) whole
    groups go to val, so no group is seen in both.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "test":
        return "test", np.arange(n_test_source)
    rng = np.random.default_rng(seed)
    if groups is not None:
        unique = np.unique(groups)
        if len(unique) < 2:
            raise ValueError("need at least two groups to carve a validation split")
        order = rng.permutation(unique)
        n_val_groups = min(len(unique) - 1, max(1, int(round(len(unique) * val_fraction))))
        is_val = np.isin(groups, order[:n_val_groups])
        chosen = np.flatnonzero(is_val if split == "val" else ~is_val)
        return "train", rng.permutation(chosen)
    n_val = max(1, min(MAX_VAL_SAMPLES, int(round(n_train_source * val_fraction))))
    if n_val >= n_train_source:
        raise ValueError(f"a training set of {n_train_source} samples is too small to carve a val")
    perm = rng.permutation(n_train_source)
    chosen = perm[:n_val] if split == "val" else perm[n_val:]
    return "train", chosen


def limit_positions(positions: np.ndarray, split: str, seed: int, limit: int | None) -> np.ndarray:
    """Keep at most `limit` positions: a seeded random subset (train/val are already shuffled).

    Test subsets use a fixed seed so that runs with different seeds score on the same images,
    and are sorted back so the first `limit` of class-sorted folders are not all one class.
    """
    if limit is None or limit >= len(positions):
        return positions
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    if split == "test":
        pick = np.random.default_rng(TEST_SUBSET_SEED).permutation(len(positions))[:limit]
        return positions[np.sort(pick)]
    return positions[:limit]


def uint8_to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) → float32 in [0, 1] (the image convention of the whole package)."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)
