"""Empirical NTK Gram matrices over a batch: exact, structured-exact and sketched estimators.

Theta[i, j] = sum_c <d f_c(x_i)/d theta, d f_c(x_j)/d theta> over the chosen parameters.

Estimators (all batched, differentiable with ``create_graph=True``, deterministic given a
``generator``):

- ``"exact"``: layer-structured exact Gram (``onnlab.distill.structured``): one forward, one
  batched backward to the layer outputs for all C outputs, Kronecker identities for Linear/Conv2d
  (``dense``), the frontend's computed PSF stack treated as a conv weight and pulled back to its
  raw parameters (``lifted``), vmapped VJPs for the few parameters of other modules.  About the
  price of C weight-gradient passes instead of B*C; the default for students.
- ``"jacobian"``: the textbook reference, ``vmap(jacrev(functional_call))`` per-sample Jacobians
  contracted over parameters.  Correct for any model, memory B x C x P; kept as the oracle and as
  the automatic fallback when a model defeats the structured engine (weights reused in a loop).
- ``"jvp"``: random parameter projections, Theta ~ (1/m) sum_r (J v_r)(J v_r)^T with
  v_r ~ N(0, I), by forward-mode JVPs; ``size`` = m.  Unbiased; error ~ 1/sqrt(m).
- ``"output"``: random *output* projections: per-sample gradients of u_r . f with u_r drawn as
  rows of Haar-random orthogonal C x C blocks scaled by sqrt(C/m); ``size`` = m.  Exact when m is
  a multiple of C, unbiased below; useful for many outputs (segmentation).  Explicit rows can
  be passed instead (``cotangents``): two models projected on the *same* rows have Grams that
  are equal whenever the models are (the matched sketch of ``onnlab.distill.anchors``).

BatchNorm/dropout: the Gram is always taken in eval mode (running statistics, no dropout) because
the NTK of a train-mode BatchNorm couples samples and is not the kernel of the deployed model; the
training flags of every submodule are restored afterwards and running statistics never change.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vmap

from onnlab.distill.structured import DEFAULT_BUDGET, Unsupported, structured_gram

ESTIMATORS = ("exact", "jacobian", "jvp", "output")
DEFAULT_SIZES = {"jvp": 256, "output": None}  # output: None -> C (exact)
_DEFAULT_SEED = 0


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def default_output_fn(out: Tensor, grid: tuple[int, int] = (4, 4)) -> Tensor:
    """Map a model output to the (B, C) outputs whose NTK is taken.

    Logits pass through.  Dense (B, K, H, W) outputs (segmentation masks) are average-pooled to a
    4x4 grid per channel: a fixed, parameter-free reduction that keeps the coarse spatial
    structure, is identical for teacher and student, and keeps C small (16 for one mask channel)
    so that the exact Gram stays cheap.
    """
    if out.dim() == 2:
        return out
    if out.dim() == 4:
        return F.adaptive_avg_pool2d(out, grid).flatten(1)
    return out.flatten(1)


class RandomOutputProjection:
    """Fixed seeded Gaussian projection of flattened outputs to ``n_outputs`` directions.

    The alternative to pooling for dense outputs: all pixels contribute, no spatial prior.  The
    matrix is drawn once (from ``seed``) for the flattened size it first sees and then reused, so
    teacher and student are projected identically.
    """

    def __init__(self, n_outputs: int = 16, seed: int = 0) -> None:
        if n_outputs < 1:
            raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
        self.n_outputs, self.seed = n_outputs, seed
        self._matrix: Tensor | None = None

    def __call__(self, out: Tensor) -> Tensor:
        flat = out.flatten(1)
        d = flat.shape[1]
        if self._matrix is None or self._matrix.shape[0] != d:
            # numpy, not torch.randn: the first call may happen inside a vmap (no random ops)
            draw = np.random.default_rng(self.seed).standard_normal((d, self.n_outputs))
            self._matrix = torch.from_numpy(draw / d**0.5)
        return flat @ self._matrix.to(flat)


def resolve_params(
    model: nn.Module, params: Iterable[Tensor] | Mapping[str, Tensor] | None
) -> dict[str, Tensor]:
    """Name the parameters to differentiate: None -> every ``requires_grad`` parameter.

    A mapping may carry replacement tensors (same shapes), installed by ``functional_call``.
    """
    named = dict(model.named_parameters())
    if params is None:
        chosen = {n: p for n, p in named.items() if p.requires_grad}
    elif isinstance(params, Mapping):
        unknown = [n for n in params if n not in named]
        if unknown:
            raise ValueError(f"params: not parameters of the model: {unknown[:3]}")
        bad = [n for n, p in params.items() if tuple(p.shape) != tuple(named[n].shape)]
        if bad:
            raise ValueError(f"params: shape differs from the model's for {bad[:3]}")
        chosen = dict(params)  # functional style: the Gram is taken at these values
    else:
        wanted = {id(p) for p in params}
        chosen = {n: p for n, p in named.items() if id(p) in wanted}
        if len(chosen) != len(wanted):
            raise ValueError("params: some tensors are not parameters of the model")
    if not chosen:
        raise ValueError("params: no parameters to take the NTK over (all frozen?)")
    return chosen


def _primals(named: dict[str, Tensor], create_graph: bool) -> dict[str, Tensor]:
    """Tensors to differentiate: the live parameters when a graph is wanted, else copies."""
    out = {}
    for n, p in named.items():
        live = create_graph and p.requires_grad
        out[n] = p if live else p.detach().requires_grad_(True)
    return out


def orthogonal_rows(m: int, c: int, generator: torch.Generator) -> Tensor:
    """m rows from stacked Haar-random orthogonal c x c blocks, scaled so E[U^T U] = I."""
    blocks = []
    for _ in range(-(-m // c)):
        q, r = torch.linalg.qr(torch.randn(c, c, generator=generator, dtype=torch.float64))
        blocks.append(q * torch.sign(torch.diagonal(r)))
    return torch.cat(blocks)[:m] * (c / m) ** 0.5


def _functional(
    model: nn.Module, output_fn: Callable[[Tensor], Tensor]
) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """(params, x) -> output_fn(model(x)) with the parameters swapped in, for torch.func."""
    buffers = dict(model.named_buffers())

    def f(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return output_fn(functional_call(model, (p, buffers), (x,)))

    return f


def _chunked_gram(parts: Iterator[Tensor], equation: str) -> Tensor:
    """Sum of ``einsum(equation, r, r)`` over the row blocks ``r`` (bounds peak memory)."""
    gram = None
    for rows in parts:
        part = torch.einsum(equation, rows, rows)
        gram = part if gram is None else gram + part
    return gram


def _gram_jacobian(
    model: nn.Module,
    x: Tensor,
    primals: dict[str, Tensor],
    output_fn: Callable[[Tensor], Tensor],
    chunk: int,
) -> Tensor:
    """Textbook oracle: per-sample Jacobians (B, C, P) by vmap(jacrev), contracted."""
    f = _functional(model, output_fn)
    jac_fn = vmap(jacrev(lambda p, xi: f(p, xi.unsqueeze(0))[0]), in_dims=(None, 0))
    J = torch.cat(
        [
            torch.cat([j.flatten(2) for j in jac_fn(primals, x[b0 : b0 + chunk]).values()], dim=2)
            for b0 in range(0, x.shape[0], chunk)
        ]
    )
    return torch.einsum("icp,jcp->ij", J, J)


def _gram_jvp(
    model: nn.Module,
    x: Tensor,
    primals: dict[str, Tensor],
    output_fn: Callable[[Tensor], Tensor],
    m: int,
    chunk: int,
    generator: torch.Generator,
) -> Tensor:
    """(1/m) sum_r (J v_r)(J v_r)^T over Gaussian parameter directions v_r, by forward mode."""
    f = _functional(model, output_fn)

    def push(tangent: dict[str, Tensor]) -> Tensor:
        return jvp(lambda p: f(p, x), (primals,), (tangent,))[1]

    def projections() -> Iterator[Tensor]:
        for r0 in range(0, m, chunk):
            r = min(chunk, m - r0)
            tangents = {
                n: torch.randn((r, *p.shape), generator=generator, dtype=p.dtype).to(p.device)
                for n, p in primals.items()
            }
            yield vmap(push)(tangents)  # (r, B, C)

    return _chunked_gram(projections(), "ric,rjc->ij") / m


def ntk_gram(model: nn.Module, x: Tensor, **options: Any) -> Tensor:
    """Empirical NTK Gram (B, B) of ``model`` on the batch ``x`` (eval-mode statistics).

    Keyword options (those of ``ntk_gram_and_output``, which this returns the Gram of):
        estimator: "exact" | "jacobian" | "jvp" | "output" (see the module docstring).
        size: number of random projections for "jvp" (default 256) / "output" (default C).
        generator: source of the random projections; None -> a fixed seed, so two calls agree.
        create_graph: keep the graph so the Gram can be differentiated w.r.t. the parameters
            (double backward); False returns a detached Gram and never touches ``.grad``.
        params: parameters to differentiate: tensors of the model, or {name: tensor} to take
            the Gram at those values (functional style, e.g. for gradcheck); None -> all
            ``requires_grad`` parameters.  Frozen parameters passed explicitly are allowed.
        chunk_size: bounds memory: samples per vmapped Jacobian chunk ("jacobian"),
            projections per chunk ("jvp"), Jacobian elements per block ("exact"/"output").
        output_fn: maps the model output to (B, C); default ``default_output_fn``.
        cotangents: explicit (M, C) output rows for "output" (``size``/``generator`` unused);
            the Gram is then ``sum_m (J^T u_m)(J^T u_m)^T``.
    """
    return ntk_gram_and_output(model, x, **options)[0]


def ntk_gram_and_output(
    model: nn.Module,
    x: Tensor,
    *,
    estimator: str = "exact",
    size: int | None = None,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
    params: Iterable[Tensor] | Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
    output_fn: Callable[[Tensor], Tensor] | None = None,
    cotangents: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``ntk_gram`` (same options, documented there) plus the eval-mode model output.

    Why: "exact"/"output" run one ordinary forward; handing its output back lets the NTKD
    objective take the task/KD losses from it instead of paying for a second forward.  The
    output is None for "jacobian"/"jvp".  It carries a graph iff ``create_graph``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if x.dim() < 2:
        raise ValueError(f"x must be batched (B, ...), got shape {tuple(x.shape)}")
    if cotangents is not None and (estimator != "output" or cotangents.dim() != 2):
        raise ValueError("cotangents: an (M, C) tensor, with estimator='output' only")
    output_fn = output_fn or default_output_fn
    gen = generator or torch.Generator().manual_seed(_DEFAULT_SEED)
    named = resolve_params(model, params)
    primals = _primals(named, create_graph)
    x = x.detach()
    with eval_mode(model), torch.enable_grad():
        gram, out = _dispatch(
            model, x, primals, estimator, size, gen, create_graph, chunk_size, output_fn, cotangents
        )
    if not create_graph:
        gram = gram.detach()
        out = None if out is None else out.detach()
    return gram, out


def _dispatch(
    model: nn.Module,
    x: Tensor,
    primals: dict[str, Tensor],
    estimator: str,
    size: int | None,
    gen: torch.Generator,
    create_graph: bool,
    chunk_size: int | None,
    output_fn: Callable[[Tensor], Tensor],
    rows: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    if estimator == "jacobian":
        return _gram_jacobian(model, x, primals, output_fn, chunk_size or x.shape[0]), None
    if estimator == "jvp":
        m = size or DEFAULT_SIZES["jvp"]
        return _gram_jvp(model, x, primals, output_fn, m, chunk_size or min(m, 32), gen), None

    def cot(n_out: int) -> Tensor:
        return orthogonal_rows(size or n_out, n_out, gen) if rows is None else rows

    try:
        return structured_gram(
            model,
            x,
            primals,
            None if estimator == "exact" else cot,
            create_graph=create_graph,
            output_fn=output_fn,
            budget=chunk_size or DEFAULT_BUDGET,
        )
    except Unsupported as exc:  # exact is a valid (if slower) answer for "output" too
        warnings.warn(f"structured NTK unavailable ({exc}); using vmap(jacrev)", stacklevel=3)
        if rows is not None:  # explicit rows must stay explicit: project the outputs on them

            def projected(out: Tensor, fn: Callable[[Tensor], Tensor] = output_fn) -> Tensor:
                return fn(out) @ rows.to(out).T

            output_fn = projected
        return _gram_jacobian(model, x, primals, output_fn, chunk_size or x.shape[0]), None
