"""Parameters that act through a computed dense weight: the optical frontend's PSFs.

A frontend computes its PSF stack from raw parameters (softmax, transmission, flip) and applies
it with one ``conv2d``.  Recording those calls (a ``TorchFunctionMode`` active during the
module's forward) lets the dense-layer rule give per-sample gradients w.r.t. the *computed*
weight; one vmapped VJP of "parameters -> weights" pulls them back to the raw parameters.  This
is only done after checking on the autograd graph that the parameters reach the module output
through those weights alone; otherwise the caller falls back to a vmapped VJP of the module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from unittest.mock import patch

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, vjp, vmap
from torch.overrides import TorchFunctionMode

from onnlab.distill.dense import Unsupported, conv_per_sample, dense_inputs, use_grouped

if TYPE_CHECKING:
    from onnlab.distill.structured import _Owner

DENSE_OPS = {torch.conv2d: "conv2d", F.linear: "linear"}


@dataclass
class Call:
    """A conv2d/linear call made inside a generic owner's forward."""

    kind: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Tensor


class DenseCalls(TorchFunctionMode):
    """Records conv2d/linear calls made while a generic owner's forward runs."""

    def __init__(self, sink: list[Call]) -> None:
        super().__init__()
        self.sink = sink

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        kind = DENSE_OPS.get(func)
        if kind is not None and isinstance(out, Tensor):
            self.sink.append(Call(kind, args, kwargs, out))
        return out


class UseCounter(TorchFunctionMode):
    """Counts how often each tensor is consumed during a forward and records avg-pool calls.

    Why: if a lifted convolution's output is consumed only by a padding-free ``avg_pool2d``,
    pooling commutes with the weight contraction (``pool(conv(x, W))`` contracts ``W`` with pooled
    patches), so per-sample weight-gradients can be formed at the pooled resolution -- 16x fewer
    positions for the MNIST frontend.  Metadata reads (``.shape``) are not counted as uses.
    """

    def __init__(self) -> None:
        super().__init__()
        self.uses: dict[int, int] = {}
        self.pools: dict[int, Call] = {}
        self._alive: list[Tensor] = []  # keeps ids unique while the counts are in use

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") != "__get__":
            for value in (*args, *kwargs.values()):
                for t in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(t, Tensor):
                        self.uses[id(t)] = self.uses.get(id(t), 0) + 1
                        self._alive.append(t)
        out = func(*args, **kwargs)
        if func is F.avg_pool2d and args and isinstance(out, Tensor):
            self.pools[id(args[0])] = Call("avg_pool2d", args, kwargs, out)
        return out

    def pool_after(self, call: Call) -> Call | None:
        """The avg_pool2d that is the only consumer of ``call``'s output, if it is plain."""
        pool = self.pools.get(id(call.output))
        if pool is None or self.uses.get(id(call.output)) != 1 or call.kind != "conv2d":
            return None
        names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor")
        opts = dict(zip(names, pool.args[1:], strict=False))
        opts.update(pool.kwargs)
        padding = opts.get("padding", 0)
        if (padding not in (0, (0, 0), [0, 0])) or opts.get("ceil_mode", False):
            return None
        if opts.get("divisor_override", opts.get("divisor")) is not None:
            return None
        return pool


def _pooled_patches(A: Tensor, out_hw: tuple[int, int], pool: Call) -> Tensor:
    """Average-pool (B, T, K) patches laid out on the conv output grid like the pool does."""
    B, _, K = A.shape
    maps = A.transpose(1, 2).reshape(B, K, *out_hw)
    pooled = F.avg_pool2d(maps, *pool.args[1:], **pool.kwargs)
    return pooled.flatten(2).transpose(1, 2)


def _graph_reaches(root: Tensor, targets: set[Any], stops: set[Any]) -> bool:
    """Does ``root``'s autograd graph reach a node in ``targets`` without passing ``stops``?"""
    seen, todo = set(), [root.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen or node in stops:
            continue
        seen.add(node)
        if node in targets:
            return True
        todo.extend(nxt for nxt, _ in node.next_functions)
    return False


def _accumulators(tensors: list[Tensor]) -> set[Any]:
    """The autograd nodes standing for parameter tensors (AccumulateGrad or their grad_fn)."""
    nodes = set()
    for t in tensors:
        nodes.add(t.grad_fn if t.grad_fn is not None else t.view_as(t).grad_fn.next_functions[0][0])
    return nodes


def lifted_calls(owner: _Owner, params: list[Tensor]) -> list[Call] | None:
    """The intercepted dense calls through which alone the owner's parameters act, or None."""
    leaves = _accumulators(params)
    calls = [
        c
        for c in owner.inner
        if isinstance(c.args[1], Tensor) and _graph_reaches(c.args[1], leaves, set())
    ]
    if not calls or owner.output is None:
        return None
    inputs = {a.grad_fn for a in owner.args if isinstance(a, Tensor) and a.grad_fn is not None}
    for c in calls:
        bias = c.args[2] if len(c.args) > 2 else c.kwargs.get("bias")
        if bias is not None and _graph_reaches(bias, leaves, inputs):
            return None  # parameter-dependent bias: keep the generic path
        if _graph_reaches(c.args[0], leaves, inputs):
            return None  # parameters also act on the call's input
    stops = inputs | {c.args[1].grad_fn for c in calls}
    if _graph_reaches(owner.output, leaves, stops):
        return None  # parameters reach the output by another route
    return calls


class _WeightsOnly(TorchFunctionMode):
    """Re-runs a forward, collecting dense-call weights and returning zeros for the calls.

    Why: it turns "the weights this module computes from its parameters" into a function the
    torch.func transforms can differentiate (autograd's batched VJP has no batching rule for
    softmax backward and loops over rows), at the price of the cheap parameter math only.
    """

    def __init__(self, sink: list[Tensor], shapes: list[torch.Size]) -> None:
        super().__init__()
        self.sink, self.shapes = sink, shapes

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func not in DENSE_OPS or len(self.sink) >= len(self.shapes):
            return func(*args, **kwargs)
        shape = self.shapes[len(self.sink)]
        self.sink.append(args[1])
        return args[1].new_zeros(shape)


def _conv_options(call: Call) -> dict[str, Any]:
    names, defaults = ("stride", "padding", "dilation", "groups"), (1, 0, 1, 1)
    return {
        n: (call.args[3 + i] if len(call.args) > 3 + i else call.kwargs.get(n, d))
        for i, (n, d) in enumerate(zip(names, defaults, strict=True))
    }


def lifted_rows_or_gram(
    owner: _Owner,
    calls: list[Call],
    grads: list[Tensor | None],
    primals: dict[str, Tensor],
    B: int,
    budget: int,
    pools: list[Call | None] | None = None,
) -> Tensor:
    """Per-sample rows (M, B, P) for parameters acting through intercepted dense weights, or
    directly their Gram contribution (B, B) when the module's kernels are independent and a
    block rule is cheaper (`_psf_block_gram` with the module's closed-form PSF Jacobians, else
    `_block_gram`).

    ``grads[i]`` is the output-gradient of ``calls[i]``, or of its only consumer ``pools[i]``
    (an avg_pool2d), in which case the patches are pooled the same way.
    """
    M = next(g for g in grads if g is not None).shape[0]
    pools = pools or [None] * len(calls)
    rows = []
    for call, G, pool in zip(calls, grads, pools, strict=True):
        weight = call.args[1]
        if G is None:
            rows.append(weight.new_zeros(M * B, *weight.shape))
            continue
        if pool is not None:
            A = dense_inputs("conv2d", call.args[0], weight, _conv_options(call))
            A = _pooled_patches(A, tuple(call.output.shape[-2:]), pool)
            jw = torch.einsum("mbot,btk->mbok", G.flatten(3), A)
            rows.append(jw.reshape(M * B, *weight.shape))
            continue
        if call.kind == "conv2d" and use_grouped(M, call.args[0].shape[1], G[0, 0, 0].numel()):
            jw = conv_per_sample(call.args[0], G, weight.shape, _conv_options(call))
            rows.append(jw.reshape(M * B, *weight.shape))
            continue
        if call.kind == "conv2d":
            A = dense_inputs("conv2d", call.args[0], weight, _conv_options(call))
            Gd = G.flatten(3)  # (M, B, O, T)
        else:
            A = dense_inputs("linear", call.args[0], weight, {})
            Gd = G.reshape(M, B, A.shape[1], -1).transpose(2, 3)
        rows.append(torch.einsum("mbot,btk->mbok", Gd, A).reshape(M * B, *weight.shape))

    index = {id(c.output) for c in calls}
    keep = [i for i, c in enumerate(owner.inner) if id(c.output) in index]
    shapes = [torch.Size((1, *c.output.shape[1:])) for c in owner.inner[: keep[-1] + 1]]
    args = tuple(
        a[:1] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == B else a
        for a in owner.args
    )
    params = {local: primals[full] for local, full in owner.names.items()}
    # Independent kernels: take the per-kernel Jacobian (D rows: one per weight entry of a
    # kernel) when that is fewer rows than the M * B gradient rows to pull back otherwise.
    blocks = _independent_kernels(owner.module, params, rows)
    blocks = blocks and sum(r[0, 0].numel() for r in rows) <= M * B
    closed = any(
        callable(getattr(owner.module, n, None)) for n in ("kernel_grams", "kernel_jacobians")
    )
    if blocks and closed:
        return _psf_block_gram(owner, args, shapes, keep, params, rows, M, B)

    def weights_of(p: dict[str, Tensor]) -> tuple[Tensor, ...]:
        sink: list[Tensor] = []
        with _WeightsOnly(sink, shapes):
            functional_call(owner.module, p, args, owner.kwargs)
        return tuple(sink[i] for i in keep)

    _, pullback = vjp(weights_of, params)
    if blocks:
        return _block_gram(pullback, params, rows, M, B)
    n_params = sum(p.numel() for p in params.values())
    step = max(1, budget // max(1, n_params + sum(r[0].numel() for r in rows)))
    chunks = []
    for r0 in range(0, M * B, step):
        pulled = vmap(pullback)(tuple(r[r0 : r0 + step] for r in rows))[0]
        chunks.append(torch.cat([pulled[k].flatten(1) for k in params], dim=1))
    return torch.cat(chunks).view(M, B, -1)


def _independent_kernels(
    module: torch.nn.Module, params: dict[str, Tensor], rows: list[Tensor]
) -> bool:
    """Whether the block rules (`_block_gram`, `_psf_block_gram`) apply.

    The module must declare ``independent_kernels = True`` (weight block k is a function of the
    parameter slices ``[k]`` alone -- the phase frontend: one sub-aperture per kernel), and every
    parameter and weight must share that leading kernel axis.
    """
    if not getattr(module, "independent_kernels", False):
        return False
    k = rows[0].shape[1]
    return all(r.shape[1] == k for r in rows) and all(p.shape[0] == k for p in params.values())


def _kernel_gram(R: Tensor, kernel: Tensor) -> Tensor:
    """(B, B) ``sum_m sum_k (R_mk J_k)(R_mk J_k)^T`` for rows R (M, B, K, D), through the small
    D x D kernel ``J_k J_k^T`` (K, D, D) (the block rules run when D <= M B)."""
    RK = torch.einsum("mbkd,kde->mbke", R, kernel)
    return torch.einsum("mbke,mcke->bc", RK, R)


def _psf_block_gram(
    owner: _Owner,
    args: tuple[Any, ...],
    shapes: list[torch.Size],
    keep: list[int],
    params: dict[str, Tensor],
    rows: list[Tensor],
    M: int,
    B: int,
) -> Tensor:
    """Gram of a module that gives its per-kernel PSF Jacobians or their products J_k J_k^T.

    Why: the phase frontend's PSFs come from the wave model, and any autograd route to their
    Jacobian pays one pass through it per row or per PSF value; the module's closed form
    (`onnlab.optics.psf_jacobian`) costs about one. The rows (gradients w.r.t. the intercepted
    weights) are first taken back to the PSFs through the module's own ``psfs() -> weights``
    map (a flip and a cast: linear, and cheap to pull back through), with ``psfs`` swapped for
    a placeholder so the wave model is not run. ``kernel_jacobians(params)`` returns, per
    parameter, d psfs() / d param[k] for every kernel k, shaped (*psfs().shape, P). A module
    may also give ``kernel_grams(params)``, the (K, D, D) products J_k J_k^T summed over its
    parameters, with ``psf_shape``; then only those are used (the phase frontend: a
    closed-form backward, `onnlab.optics.psf_phase_gram`).
    """
    module = owner.module
    if callable(getattr(module, "kernel_grams", None)):
        # the product J_k J_k^T directly, with its own backward: (K, D, D)
        kernel, psf_shape = module.kernel_grams(params), tuple(module.psf_shape)
    else:
        jacs = module.kernel_jacobians(params)  # name -> (*psf shape, P_name)
        if set(jacs) != set(params):
            raise Unsupported(f"{owner.path}.kernel_jacobians must cover {sorted(params)}")
        psf_shape = next(iter(jacs.values())).shape[:-1]
        parts = [jacs[name].flatten(1, -2) for name in params]
        jac = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)  # (K, D, P)
        kernel = torch.bmm(jac, jac.transpose(1, 2))
    psf0 = rows[0].new_zeros(psf_shape)  # the map is linear: any point will do

    def weights_of_psfs(psf: Tensor) -> tuple[Tensor, ...]:
        sink: list[Tensor] = []
        with _WeightsOnly(sink, shapes), patch.object(module, "psfs", lambda: psf):
            module(*args, **owner.kwargs)
        return tuple(sink[i] for i in keep)

    _, to_psfs = vjp(weights_of_psfs, psf0)
    R = vmap(to_psfs)(tuple(rows))[0]  # (M B, K, C, kh, kw)
    return _kernel_gram(R.reshape(M, B, R.shape[1], -1), kernel.to(R.dtype))


def _block_gram(
    pullback: Callable[..., Any], params: dict[str, Tensor], rows: list[Tensor], M: int, B: int
) -> Tensor:
    """Gram ``sum_m sum_k R_mk (J_k J_k^T) R_mk^T`` of kernel-independent weights (B, B).

    Why: pulling every one of the M*B rows ``R`` (gradients w.r.t. the computed weights) back
    through the parameter map costs M*B VJPs -- for the phase frontend, M*B passes through the
    wave model.  When kernel k's weight depends on its own parameters only, the Jacobian
    ``J_k`` (D x P_k, D = entries of one kernel's weight) comes from D VJPs whose cotangents
    hit the same entry of every kernel at once; the Gram then needs only the small D x D
    kernel ``J_k J_k^T`` per kernel.  Exact, and differentiable like the row path.
    """
    K = rows[0].shape[1]
    widths = [r[0, 0].numel() for r in rows]
    D = sum(widths)
    eye = torch.eye(D, dtype=rows[0].dtype, device=rows[0].device)
    basis, at = [], 0
    for r, w in zip(rows, widths, strict=True):
        block = eye[:, at : at + w].reshape(D, 1, *r.shape[2:])
        basis.append(block.expand(D, K, *r.shape[2:]))
        at += w
    pulled = vmap(pullback)(tuple(basis))[0]
    jac = torch.cat([pulled[k].reshape(D, K, -1) for k in params], dim=2).transpose(0, 1)
    kernel = torch.bmm(jac, jac.transpose(1, 2))  # (K, D, D)
    return _kernel_gram(torch.cat([r.flatten(2) for r in rows], dim=2).view(M, B, K, D), kernel)
