"""Segmentation estimate: kernel regression of a pixelwise readout, scored by mIoU.

The readout maps the K feature maps at one pixel to the mask logit of that pixel (a 1x1
convolution; with `hidden`, a pixelwise MLP of 1x1 convolutions). Every pixel is a regression
sample, and the kernel between pixel s of image x and pixel s' of x' is the backend NTK of the
optical kernel ``U_s(x)^T M U_s'(x')`` (`onnlab.estimate.features`).

- Linear readout: the kernel has rank r <= C k^2, so the ridge is solved in its primal form
  over *all* training pixels (same predictions as the dual, r^3 instead of N_pixels^3).
- With hidden layers the kernel is not low-rank: the dual is solved on `n_pixels` training
  pixels drawn uniformly (seeded), and all validation/test pixels are predicted in chunks.

Class imbalance (a small object on a large background) makes a fixed 0.5 threshold on a
least-squares output predict "all background", so the decision threshold is chosen on the
validation split together with the ridge.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from onnlab.estimate.features import PatchGeometry, pixel_features
from onnlab.estimate.kernels import KernelPair, backend_ntk
from onnlab.estimate.regression import IoUCounter

THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
_ROWS = 2048  # pixels per block of the dual cross kernel


def _chunks(geom: PatchGeometry, images: torch.Tensor):
    step = geom.chunk_images(geom.n_psf * geom.image_hw[0] * geom.image_hw[1])
    for i in range(0, images.shape[0], step):
        yield i, images[i : i + step]


def _score(
    geom: PatchGeometry,
    images: torch.Tensor,
    masks: torch.Tensor,
    predict: Callable[[torch.Tensor], dict[float, torch.Tensor]],
    factor: torch.Tensor,
    centre: torch.Tensor | None,
    thresholds: tuple[float, ...],
) -> dict[tuple[float, float], float]:
    """mIoU for every (lambda, threshold): `predict` maps pixel features to {lambda: output}."""
    counters: dict[tuple[float, float], IoUCounter] = {}
    for i, x in _chunks(geom, images):
        feats = pixel_features(x, geom, factor, centre)
        target = masks[i : i + len(x)].reshape(-1)
        for lam, out in predict(feats).items():
            for thr in thresholds:
                counters.setdefault((lam, thr), IoUCounter()).update(out + (0.5 - thr), target)
    return {key: c.miou() for key, c in counters.items()}


def segment(
    geom: PatchGeometry,
    factor: torch.Tensor,
    centre: torch.Tensor | None,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    lambdas: tuple[float, ...],
    hidden: tuple[int, ...] = (),
    n_pixels: int = 4000,
    seed: int = 0,
) -> tuple[float, float, float, float]:
    """(test mIoU, val mIoU, lambda_rel, threshold) of the pixelwise kernel regression."""
    if hidden:
        predict = _dual(geom, factor, centre, train, lambdas, hidden, n_pixels, seed)
    else:
        predict = _primal(geom, factor, centre, train, lambdas)
    val_scores = _score(geom, *val, predict, factor, centre, THRESHOLDS)
    best = max(val_scores.values())
    lam, thr = max(k for k, v in val_scores.items() if v >= best - 1e-12)

    def chosen(feats: torch.Tensor) -> dict[float, torch.Tensor]:
        return {lam: predict(feats)[lam]}

    test_score = _score(geom, *test, chosen, factor, centre, (thr,))[(lam, thr)]
    return test_score, val_scores[(lam, thr)], lam, thr


def _primal(geom, factor, centre, train, lambdas) -> Callable:
    r = factor.shape[1]
    gram = torch.zeros(r, r, dtype=torch.float64)
    fsum = torch.zeros(r, dtype=torch.float64)
    fy = torch.zeros(r, dtype=torch.float64)
    ysum, count = 0.0, 0
    images, masks = train
    for i, x in _chunks(geom, images):
        f = pixel_features(x, geom, factor, centre)
        t = masks[i : i + len(x)].to(torch.float64).reshape(-1)
        gram += f.T @ f
        fsum += f.sum(0)
        fy += f.T @ t
        ysum += float(t.sum())
        count += t.numel()
    ymean = ysum / count
    evals, evecs = torch.linalg.eigh(0.5 * (gram + gram.T))
    evals = evals.clamp_min(0.0)
    scale = float(torch.trace(gram)) / count  # mean dual diagonal
    proj = evecs.T @ (fy - ymean * fsum)  # Phi^T (y - mean y)
    weights = {lam: evecs @ (proj / (evals + lam * scale)) for lam in lambdas}
    return lambda feats: {lam: feats @ w + ymean for lam, w in weights.items()}


def _dual(geom, factor, centre, train, lambdas, hidden, n_pixels, seed) -> Callable:
    images, masks = train
    per_image = geom.image_hw[0] * geom.image_hw[1]
    total = images.shape[0] * per_image
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(total, generator=gen)[: min(n_pixels, total)].sort().values
    parts = []
    for i, x in _chunks(geom, images):  # gather the drawn pixels chunk by chunk (bounded memory)
        lo, hi = i * per_image, (i + len(x)) * per_image
        local = pick[(pick >= lo) & (pick < hi)] - lo
        if len(local):
            parts.append(pixel_features(x, geom, factor, centre)[local])
    phi = torch.cat(parts)
    y = masks.reshape(-1)[pick].to(torch.float64)
    diag = phi.square().sum(1)
    theta = backend_ntk(KernelPair.frozen_input(phi @ phi.T, diag, diag), hidden)
    evals, evecs = torch.linalg.eigh(0.5 * (theta + theta.T))
    evals = evals.clamp_min(0.0)
    scale = float(torch.diagonal(theta).mean())
    ymean = float(y.mean())
    proj = evecs.T @ (y - ymean)
    lams = tuple(lambdas)
    coef = torch.stack([evecs @ (proj / (evals + lam * scale)) for lam in lams], dim=1)

    def predict(rows: torch.Tensor) -> dict[float, torch.Tensor]:
        outs = []
        for j in range(0, rows.shape[0], _ROWS):
            block = rows[j : j + _ROWS]
            k0 = KernelPair.frozen_input(block @ phi.T, block.square().sum(1), diag)
            outs.append(backend_ntk(k0, hidden) @ coef + ymean)
        out = torch.cat(outs)
        return {lam: out[:, i] for i, lam in enumerate(lams)}

    return predict
