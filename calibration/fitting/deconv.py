"""Non-negative, regularised least squares for the PSFs (block principal pivoting, FISTA).

Why normal equations: the PSF-from-random-patterns problem is linear in the PSFs, and each
kernel only lights its own tile, so the problem splits into K small quadratic programs
(C·k² unknowns each) once AᵀWA and AᵀWy are formed (`calibration.forward.
psf_normal_equations`). Those are solved exactly by batched block principal pivoting (a few
LU solves per kernel batch), with projected FISTA as the fallback for singular problems;
iterating the full image-formation model instead would take minutes. Non-negativity is a
constraint (intensity PSFs cannot be negative).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def fista_quadratic(
    hessian: torch.Tensor,
    linear: torch.Tensor,
    x0: torch.Tensor,
    *,
    max_iter: int = 3000,
    tol: float = 1e-10,
) -> tuple[torch.Tensor, int]:
    """min ½xᵀHx − cᵀx s.t. x ≥ 0, batched over a leading axis (one problem per kernel).

    Variables are first scaled to give H a unit diagonal (Jacobi preconditioning; a positive
    diagonal scaling keeps the constraint x ≥ 0 intact), because prior precisions span decades.
    Block principal pivoting (exact, a few batched solves) answers every kernel it can; the
    rest, and singular problems, go to FISTA with step 1/λ_max(H) and gradient-based adaptive
    restart (O'Donoghue & Candès). FISTA alone needed its 3000 iterations on the window PSFs of
    the 56-kernel segmentation optic (867 unknowns each): most of a 40-min calibration.
    Returns the solution and the FISTA iterations used (0: solved exactly by pivoting).
    """
    dscale = torch.diagonal(hessian.to(torch.float64), dim1=-2, dim2=-1).clamp_min(1e-300).rsqrt()
    h = hessian.to(torch.float64) * dscale[:, :, None] * dscale[:, None, :]
    c = linear.to(torch.float64) * dscale
    # Exact route first: block principal pivoting finds the optimal active set in a few
    # batched solves (the unconstrained minimiser, round 0, is the usual answer for a
    # well-exposed PSF with a prior). Kernels it leaves unresolved (a singular H without a
    # prior, or pivoting that does not settle) continue with FISTA from its iterate.
    try:
        x, solved = _principal_pivoting(h, c)
    except RuntimeError:  # singular (no prior, unobserved pixels): plain FISTA
        x, solved = x0.to(torch.float64) / dscale, torch.zeros(c.shape[0], dtype=torch.bool)
    if bool(solved.all()):
        return x * dscale, 0
    todo = ~solved
    x_rest, it = _fista_quadratic_raw(h[todo], c[todo], x[todo].clamp_min(0), max_iter, tol)
    x = x.clone()
    x[todo] = x_rest
    return x * dscale, it


def _principal_pivoting(
    h: torch.Tensor, c: torch.Tensor, max_rounds: int = 60
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched block principal pivoting (Kim & Park, SIAM J. Sci. Comput. 33, 2011) for
    min ½xᵀHx − cᵀx, x ≥ 0, H positive definite with a unit diagonal.

    Each round solves the equality-constrained problem on the current free set (one batched
    LU solve with the bound variables' rows replaced by identity), then swaps
    every variable that violates the KKT conditions (free and negative, or bound with a
    negative gradient). Full exchanges converge in a few rounds on these problems; a kernel
    whose count of violations stops falling three times in a row switches to Murty's
    single-variable exchange (largest index), which provably terminates. Returns the iterate
    (K, n) and which kernels satisfy the KKT conditions to round-off."""
    k, n = c.shape
    free = torch.ones(k, n, dtype=torch.bool)
    best = torch.full((k,), n + 1)
    tries = torch.full((k,), 3)
    x = torch.zeros_like(c)
    solved = torch.zeros(k, dtype=torch.bool)
    scale = c.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    for _ in range(max_rounds):
        todo = (~solved).nonzero()[:, 0]
        if todo.numel() == 0:
            break
        f = free[todo]
        mask = f[:, :, None] & f[:, None, :]
        hm = torch.where(mask, h[todo], torch.zeros(())) + torch.diag_embed((~f).to(h.dtype))
        xt = torch.linalg.solve(hm, torch.where(f, c[todo], torch.zeros(()))[..., None])[..., 0]
        grad = torch.einsum("kij,kj->ki", h[todo], xt) - c[todo]
        tol = 1e-12 * scale[todo]
        bad = (f & (xt < -tol)) | (~f & (grad < -tol))
        x[todo] = xt.clamp_min(0) * f
        count = bad.sum(-1)
        done = count == 0
        solved[todo[done]] = True
        improved = count < best[todo]
        best[todo] = torch.where(improved, count, best[todo])
        tries[todo] = torch.where(improved, torch.full_like(count, 3), tries[todo] - 1)
        full = improved | (tries[todo] > 0)
        last = n - 1 - bad.flip(-1).int().argmax(-1)  # largest violating index
        single = torch.zeros_like(bad)
        single[torch.arange(len(todo)), last] = True
        flip = torch.where(full[:, None], bad, single & bad)
        free[todo] = f ^ flip
    return x, solved


def _fista_quadratic_raw(
    h: torch.Tensor, c: torch.Tensor, x0: torch.Tensor, max_iter: int, tol: float
) -> tuple[torch.Tensor, int]:
    lip = torch.linalg.eigvalsh(h)[..., -1].clamp_min(1e-300)[:, None]
    x = x0.to(torch.float64).clamp_min(0).clone()
    z = x.clone()
    t = torch.ones_like(lip)
    it = 0
    while it < max_iter:
        it += 1
        grad = torch.einsum("kij,kj->ki", h, z) - c
        x_new = (z - grad / lip).clamp_min(0)
        restart = ((z - x_new) * (x_new - x)).sum(-1, keepdim=True) > 0
        t_new = 0.5 * (1 + torch.sqrt(1 + 4 * t * t))
        mom = torch.where(restart, torch.zeros_like(t), (t - 1) / t_new)
        t_new = torch.where(restart, torch.ones_like(t), t_new)
        z = x_new + mom * (x_new - x)
        change = float(((x_new - x).norm(dim=-1) / x_new.norm(dim=-1).clamp_min(1e-300)).max())
        x, t = x_new, t_new
        if change < tol:
            break
    return x, it


@dataclass(frozen=True)
class PSFSolve:
    """MAP PSFs per kernel with the pieces needed to judge them."""

    psfs: torch.Tensor  # (K, n) non-negative
    amplitude: torch.Tensor  # (K,) least-squares scale of the design shape (≈ α)
    chi2: torch.Tensor  # (K,) data misfit / (noise variance × pixels)
    iterations: int


def solve_psfs_map(
    gram: torch.Tensor,
    rhs: torch.Tensor,
    yty: torch.Tensor,
    n_pixels: int,
    design: torch.Tensor,
    noise_var: float,
    *,
    prior_rel_std: float | None = 0.3,
    max_iter: int = 3000,
) -> PSFSolve:
    """Non-negative MAP estimate from per-kernel normal equations (see `psf_normal_equations`).

    Why a prior centred on the (rescaled) design: resampling on the bench (sub-pixel
    misalignment, registration) attenuates a PSF's highest spatial frequencies so much that
    plain least squares amplifies noise there (seen as checkerboard errors); a fabricated
    optic is the design plus a relative error, so each pixel gets a Gaussian prior
    N(a·design, (prior_rel_std·a·design + floor)²), with ``a`` the least-squares brightness
    of the design shape. Well-measured components follow the data; only the unobservable
    ones fall back to the design. ``prior_rel_std=None`` gives plain NNLS.
    """
    k, n = rhs.shape
    d = design.reshape(k, n).to(torch.float64)
    g = gram.to(torch.float64) / noise_var
    c = rhs.to(torch.float64) / noise_var
    dgd = torch.einsum("ki,kij,kj->k", d, g, d).clamp_min(1e-300)
    amp = torch.einsum("ki,ki->k", c, d) / dgd
    mean = amp[:, None] * d
    if prior_rel_std is not None:
        floor = 0.02 * mean.amax(-1, keepdim=True)
        prec = 1.0 / (prior_rel_std * mean + floor) ** 2
        h = g + torch.diag_embed(prec)
        lin = c + prec * mean
    else:
        h, lin = g, c
    x, iters = fista_quadratic(h, lin, mean, max_iter=max_iter)
    misfit = (
        torch.einsum("ki,kij,kj->k", x, gram.to(torch.float64), x)
        - 2 * torch.einsum("ki,ki->k", rhs.to(torch.float64), x)
        + yty.to(torch.float64)
    )
    chi2 = misfit / (noise_var * max(n_pixels, 1))
    return PSFSolve(psfs=x, amplitude=amp, chi2=chi2, iterations=iters)
