"""Kernel ridge regression with the ridge chosen on a validation split.

``yhat = Theta(test, train) (Theta(train, train) + lambda I)^-1 Y`` is the output of the
linearised network trained to convergence on the MSE loss (lambda = 0: gradient flow from a
zero output; lambda > 0: weight decay / early stopping). One eigendecomposition of the train
Gram serves every lambda of the grid, so the grid search costs a few matrix-vector products.

Targets are centred by their training mean (added back afterwards): an unpenalised intercept,
what a trained bias does on ActNorm-centred features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Ridge grid relative to mean(diag Theta_train), half-decades from 1e-7 to 1e4. The top must
# reach the kernel's largest eigenvalues (up to n * mean diag for a low-rank kernel, e.g. a few
# coarsely binned kernels): early-stopped training explores that whole path, and a grid that
# stops at 10 would only ever see the least-squares end of it.
DEFAULT_LAMBDAS = tuple(10.0 ** (e / 2) for e in range(-14, 9))


@dataclass
class RidgeResult:
    """Selected ridge, validation score per ridge, and the test score at the selected ridge."""

    score: float
    val_score: float
    lambda_rel: float
    val_scores: dict[float, float]
    predictions: torch.Tensor | None = None


def _select(val_scores: dict[float, float]) -> float:
    """Best validation score; ties go to the larger ridge (smoother, less variance)."""
    best = max(val_scores.values())
    return max(lam for lam, s in val_scores.items() if s >= best - 1e-12)


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of (N, C) scores."""
    return float((scores.argmax(1) == labels).to(torch.float64).mean())


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """float64 one-hot targets (N, n_classes)."""
    return torch.nn.functional.one_hot(labels.long(), n_classes).to(torch.float64)


def _ridge_coefficients(
    evals: torch.Tensor, proj: torch.Tensor, lambdas: tuple[float, ...], scale: float
) -> torch.Tensor:
    """(m, c * L): ``proj / (evals + lam * scale)`` for every lam, lambda-major columns."""
    return torch.cat([proj / (evals + lam * scale)[:, None] for lam in lambdas], dim=1)


def _centred_targets(y_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y - mean, mean), float64, (n, c): the intercept is the training mean, unpenalised."""
    y = y_train.to(torch.float64)
    y = y[:, None] if y.ndim == 1 else y
    mean = y.mean(0, keepdim=True)
    return y - mean, mean


def _psd_spectrum(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (clamped at 0: rounding) and eigenvectors of a symmetrised PSD matrix."""
    evals, evecs = torch.linalg.eigh(0.5 * (gram + gram.T))
    return evals.clamp_min(0.0), evecs


def _split_lambdas(
    out: torch.Tensor, mean: torch.Tensor, lambdas: tuple[float, ...]
) -> dict[float, torch.Tensor]:
    c = mean.shape[1]
    return {lam: out[:, i * c : (i + 1) * c] + mean for i, lam in enumerate(lambdas)}


def fit_kernel_ridge(
    gram_train: torch.Tensor,
    y_train: torch.Tensor,
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS,
    *,
    relative: bool = True,
) -> LinearRidge:
    """Dual coefficients ``(gram_train + lam I)^-1 Y`` for every lam, one eigh for all.

    The result predicts from evaluation-kernel rows (``LinearRidge.predict(gram_eval)``): the
    dual coefficients of all lambdas are formed in the training eigenbasis first, so an (m, n)
    evaluation kernel is multiplied once by an (n, c * L) matrix rather than rotated into the
    eigenbasis (m n^2), and a split that needs one lambda only pays for that one.
    """
    g = gram_train.to(torch.float64)
    yc, mean = _centred_targets(y_train)
    evals, evecs = _psd_spectrum(g)
    scale = float(torch.diagonal(g).mean()) if relative else 1.0
    lambdas = tuple(lambdas)
    alpha = evecs @ _ridge_coefficients(evals, evecs.T @ yc, lambdas, scale)
    return LinearRidge(alpha, mean, lambdas)


def kernel_ridge(
    gram_train: torch.Tensor,
    y_train: torch.Tensor,
    gram_eval: torch.Tensor,
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS,
    *,
    relative: bool = True,
) -> dict[float, torch.Tensor]:
    """Predictions ``gram_eval (gram_train + lam I)^-1 Y`` for every lam (`fit_kernel_ridge`)."""
    return fit_kernel_ridge(gram_train, y_train, lambdas, relative=relative).predict(gram_eval)


@dataclass
class LinearRidge:
    """Ridge regression fitted for a whole grid of lambdas at once, linear in what it reads.

    ``weights`` (D, c * L) holds one readout per lambda: the predictions of every lambda on a
    chunk of evaluation rows cost one (B, D) x (D, c * L) product. The rows are explicit
    features (`fit_linear_ridge`) or kernel rows against the training set, the weights then
    being dual coefficients (`fit_kernel_ridge`).
    """

    weights: torch.Tensor
    mean: torch.Tensor
    lambdas: tuple[float, ...]

    def predict(
        self, phi: torch.Tensor, lambdas: tuple[float, ...] | None = None
    ) -> dict[float, torch.Tensor]:
        """{lam: (B, c) predictions}; `lambdas` restricts the work to some of the grid (the
        test split only ever needs the one chosen on validation)."""
        if lambdas is None:
            return _split_lambdas(phi.to(torch.float64) @ self.weights, self.mean, self.lambdas)
        c = self.mean.shape[1]
        cols = [self.weights[:, i * c : (i + 1) * c] for i in map(self.lambdas.index, lambdas)]
        return _split_lambdas(phi.to(torch.float64) @ torch.cat(cols, 1), self.mean, lambdas)


def fit_linear_ridge(
    phi_train: torch.Tensor, y_train: torch.Tensor, lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
) -> LinearRidge:
    """`kernel_ridge` for the kernel ``phi phi'^T`` of explicit (n, D) features.

    Solved in whichever space is smaller: the primal (D x D; push-through identity
    ``Phi_e Phi^T (Phi Phi^T + lam I)^-1 Y = Phi_e (Phi^T Phi + lam I)^-1 Phi^T Y``) or the
    dual (n x n), with one eigendecomposition for all lambdas either way; lam is scaled by the
    mean dual diagonal trace(Phi^T Phi) / n in both, so the two give the same predictions.
    """
    f = phi_train.to(torch.float64)
    yc, mean = _centred_targets(y_train)
    lambdas = tuple(lambdas)
    n, d = f.shape
    gram = f.T @ f if d <= n else f @ f.T
    evals, evecs = _psd_spectrum(gram)
    scale = float(torch.trace(gram)) / n
    if d <= n:
        weights = evecs @ _ridge_coefficients(evals, evecs.T @ (f.T @ yc), lambdas, scale)
    else:
        alpha = evecs @ _ridge_coefficients(evals, evecs.T @ yc, lambdas, scale)
        weights = f.T @ alpha
    return LinearRidge(weights, mean, lambdas)


def feature_ridge(
    phi_train: torch.Tensor,
    y_train: torch.Tensor,
    phi_eval: torch.Tensor,
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS,
) -> dict[float, torch.Tensor]:
    """`kernel_ridge` for the kernel ``phi phi'^T`` of explicit features (`fit_linear_ridge`)."""
    return fit_linear_ridge(phi_train, y_train, lambdas).predict(phi_eval)


def select_ridge(
    preds_val: dict[float, torch.Tensor],
    labels_val: torch.Tensor,
    preds_test: dict[float, torch.Tensor],
    labels_test: torch.Tensor | None,
) -> RidgeResult:
    """Pick lambda by validation accuracy (test labels untouched) and score it on test.

    With ``labels_test=None`` only the selection is made (score = nan): the caller predicts
    the test split at the chosen lambda alone.
    """
    val_scores = {lam: accuracy(p, labels_val) for lam, p in preds_val.items()}
    lam = _select(val_scores)
    if labels_test is None:
        return RidgeResult(float("nan"), val_scores[lam], lam, val_scores)
    test_pred = preds_test[lam]
    return RidgeResult(
        accuracy(test_pred, labels_test), val_scores[lam], lam, val_scores, test_pred
    )


def classify(
    gram_train: torch.Tensor,
    labels_train: torch.Tensor,
    gram_val: torch.Tensor,
    labels_val: torch.Tensor,
    gram_test: torch.Tensor,
    labels_test: torch.Tensor,
    n_classes: int,
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS,
    *,
    features: bool = False,
) -> RidgeResult:
    """Accuracy of kernel regression on centred one-hot targets, ridge chosen on validation.

    With ``features=True`` the three "grams" are explicit feature matrices (see
    `feature_ridge`); the predictions are the same.
    """
    y = one_hot(labels_train, n_classes)
    fit = (fit_linear_ridge if features else fit_kernel_ridge)(gram_train, y, lambdas)
    choice = select_ridge(fit.predict(gram_val), labels_val, {}, None)
    lam = choice.lambda_rel
    test_pred = fit.predict(gram_test, (lam,))[lam]  # the test split at the chosen ridge only
    return RidgeResult(
        accuracy(test_pred, labels_test), choice.val_score, lam, choice.val_scores, test_pred
    )


class IoUCounter:
    """Dataset-level IoU of foreground and background for binary masks (threshold 0.5)."""

    def __init__(self) -> None:
        self.inter = torch.zeros(2, dtype=torch.float64)
        self.union = torch.zeros(2, dtype=torch.float64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p, t = pred.flatten() >= 0.5, target.flatten() >= 0.5
        for i, (a, b) in enumerate(((p, t), (~p, ~t))):
            self.inter[i] += (a & b).sum()
            self.union[i] += (a | b).sum()

    def miou(self) -> float:
        """Mean over {foreground, background} of intersection / union."""
        iou = self.inter / self.union.clamp_min(1.0)
        return float(iou.mean())
