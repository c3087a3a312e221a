"""Evaluation metrics: accuracy (classification), mIoU (binary segmentation).

mIoU here is the mean over the two classes (background, foreground) of the IoU accumulated
over the whole split (total intersection / total union), the usual definition for Carvana-
style masking; per-image averaging would let tiny masks dominate.
"""

from __future__ import annotations

import torch
from torch import nn

from onnlab.data.base import ArrayDataset


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of argmax predictions equal to the labels."""
    if logits.shape[0] == 0:
        raise ValueError("accuracy of an empty batch")
    return (logits.argmax(1) == labels).float().mean().item()


def iou_counts(mask_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(2, 2) [[inter_bg, union_bg], [inter_fg, union_fg]] of thresholded predictions."""
    pred = mask_logits > 0
    truth = masks > 0.5
    counts = []
    for p, t in ((~pred, ~truth), (pred, truth)):
        counts.append(torch.stack([(p & t).sum(), (p | t).sum()]))
    return torch.stack(counts).to(torch.float64)


def miou(mask_logits: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean IoU over background and foreground (a class absent from both counts as 1)."""
    return _miou_from_counts(iou_counts(mask_logits, masks))


def _miou_from_counts(counts: torch.Tensor) -> float:
    ious = torch.where(counts[:, 1] > 0, counts[:, 0] / counts[:, 1].clamp_min(1), 1.0)
    return ious.mean().item()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Model outputs for all images in eval mode, in batches, on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs = [
        model(images[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    return torch.cat(outs)


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: ArrayDataset, task: str, batch_size: int = 256
) -> dict[str, float]:
    """Task metrics on a whole split: {"accuracy", "loss"} or {"miou", "iou_fg", "dice", "loss"}."""
    from onnlab.models.zoo import task_spec
    from onnlab.training.losses import task_loss

    kind = task_spec(task).kind
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, n = 0.0, 0
    correct = 0
    counts = torch.zeros(2, 2, dtype=torch.float64)
    for i in range(0, len(dataset), batch_size):
        x = dataset.images[i : i + batch_size].to(device)
        y = dataset.targets[i : i + batch_size].to(device)
        out = model(x)
        total_loss += task_loss(kind, out, y).item() * len(x)
        n += len(x)
        if kind == "classification":
            correct += (out.argmax(1) == y).sum().item()
        else:
            counts += iou_counts(out, y).cpu()
    model.train(was_training)
    if n == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    if kind == "classification":
        return {"accuracy": correct / n, "loss": total_loss / n}
    fg_inter, fg_union = counts[1]
    pred_plus_truth = fg_union + fg_inter  # |P| + |T| = |P ∪ T| + |P ∩ T|
    return {
        "miou": _miou_from_counts(counts),
        "iou_fg": (fg_inter / fg_union).item() if fg_union > 0 else 1.0,
        "dice": (2 * fg_inter / pred_plus_truth).item() if pred_plus_truth > 0 else 1.0,
        "loss": total_loss / n,
    }


def primary_metric(task: str) -> str:
    """The headline metric of a task ("accuracy" or "miou")."""
    from onnlab.models.zoo import task_spec

    return "accuracy" if task_spec(task).kind == "classification" else "miou"
