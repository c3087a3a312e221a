"""Exact NTK Grams assembled layer by layer from captured inputs and output-gradients.

Why: the naive exact Gram materialises every per-sample Jacobian (B x C x P) through
``vmap(jacrev(...))`` and then differentiates through it.  For a dense layer the per-sample
gradient of output ``c`` is the outer product ``g_c(x) a(x)^T`` of the gradient at the layer
output and the layer input, so its Gram contribution is ``(G G^T) * (A A^T)`` -- no per-sample
gradient is ever formed.  Conv layers are dense layers over patches; per layer we pick the
cheaper of the kernel form (``B^2 T^2`` work, good for late layers with few positions) and the
materialised form (per-sample gradients, good for early layers with few weights).

Modules that own parameters but are not Linear/Conv2d (the optical frontend, BatchNorm,
ActNorm, custom layers) are handled in two ways.  If the module computes a weight from its
parameters and applies it with ``conv2d``/``linear`` (the frontend: ``psfs()`` then a
convolution), the call is intercepted, the dense rule is applied to the computed weight, and the
per-sample rows are pulled back to the raw parameters by one batched VJP -- after checking on the
autograd graph that the parameters reach the output only through that weight.  Otherwise the
module's per-sample gradients come from a vmapped VJP of that module alone.

Model-wide work is one forward and one batched backward to the layer outputs (one cotangent per
output direction); everything stays differentiable when ``create_graph`` is set.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from onnlab.distill.dense import (
    Unsupported,
    dense_gram,
    dense_inputs,
    grouped_conv_gram,
    sum_gram,
    use_grouped,
)
from onnlab.distill.lifted import Call, DenseCalls, UseCounter, lifted_calls, lifted_rows_or_gram

# Elements of per-sample Jacobian materialised at once when the caller gives no chunk size.
DEFAULT_BUDGET = 2**24


# Models whose forward overwrites a captured output in place (ReLU(inplace=True) after a
# recorded layer): remembered so later calls clone at once instead of running twice.
_NEEDS_CLONE: weakref.WeakSet[nn.Module] = weakref.WeakSet()


@dataclass
class _Owner:
    """A module whose directly owned parameters are differentiated as a unit."""

    path: str
    module: nn.Module
    names: dict[str, str] = field(default_factory=dict)  # local name -> full parameter name
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    output: Tensor | None = None
    version: int = 0
    calls: int = 0
    inner: list[Call] = field(default_factory=list)


def _owners(model: nn.Module, names: list[str]) -> dict[str, _Owner]:
    owners: dict[str, _Owner] = {}
    for full in names:
        path, _, local = full.rpartition(".")
        owner = owners.setdefault(path, _Owner(path, model.get_submodule(path)))
        owner.names[local] = full
    for path in list(owners):  # ancestors too: they adopt parameters of never-called modules
        while path:
            path = path.rpartition(".")[0]
            owners.setdefault(path, _Owner(path, model.get_submodule(path)))
    return owners


def _promote(owners: dict[str, _Owner]) -> dict[str, _Owner]:
    """Hand parameters of never-called modules to the nearest called ancestor.

    Why: a frontend may read ``self.child.weight`` without calling ``child``; the ancestor that
    was called is then the smallest recorded function of those parameters.
    """
    for path in sorted(owners, key=lambda p: -p.count(".") - (p != "")):
        owner = owners[path]
        if not owner.names or owner.calls > 0:
            continue
        if path == "":
            raise Unsupported("parameters used outside any module forward")
        parent, _, last = path.rpartition(".")
        owners[parent].names.update({f"{last}.{k}": v for k, v in owner.names.items()})
        owner.names = {}
    return {p: o for p, o in owners.items() if o.names}


def _is_dense(owner: _Owner) -> bool:
    m = owner.module
    plain = set(owner.names) <= {"weight", "bias"} and not owner.kwargs
    conv_ok = isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
    return plain and (isinstance(m, nn.Linear) or conv_ok)


def _record(
    model: nn.Module, names: list[str], primals: dict[str, Tensor], x: Tensor, clone: bool
) -> tuple[Tensor, dict[str, _Owner], UseCounter]:
    """Run the forward once, capturing inputs/outputs of owners and of their ancestors."""
    owners = _owners(model, names)
    counter = UseCounter()
    modes: dict[str, DenseCalls] = {}

    def make_pre(owner: _Owner) -> Callable[..., None]:
        def pre(module: nn.Module, args: tuple) -> None:
            owner.inner.clear()
            modes[owner.path] = DenseCalls(owner.inner)
            modes[owner.path].__enter__()

        return pre

    def make_hook(owner: _Owner) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            mode = modes.pop(owner.path, None)
            if mode is not None:
                mode.__exit__(None, None, None)
            owner.calls += 1
            owner.args, owner.kwargs = args, kwargs
            if isinstance(output, Tensor):
                owner.output, owner.version = output, output._version
                if clone:
                    return output.clone()
            return None

        return hook

    handles = []
    for owner in owners.values():
        if owner.names and not _is_dense(owner):
            handles.append(owner.module.register_forward_pre_hook(make_pre(owner)))
        handles.append(owner.module.register_forward_hook(make_hook(owner), with_kwargs=True))
    try:
        with counter:
            out = functional_call(model, primals, (x,))
    finally:
        for handle in handles:
            handle.remove()
        for mode in modes.values():  # only left over if a forward raised
            mode.__exit__(None, None, None)
    return out, owners, counter


def _generic_jacobian(owner: _Owner, primals: dict[str, Tensor], G: Tensor, budget: int) -> Tensor:
    """Per-sample Jacobian rows (M, B, P) of a module's own parameters by a vmapped VJP."""
    M, B = G.shape[:2]
    params = {local: primals[full] for local, full in owner.names.items()}
    n_params = sum(p.numel() for p in params.values())
    batched = [isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == B for a in owner.args]
    module, kwargs = owner.module, owner.kwargs

    def per_sample(p: dict[str, Tensor], xs: tuple[Tensor, ...], g: Tensor) -> dict[str, Tensor]:
        it = iter(xs)
        args = tuple(
            next(it).unsqueeze(0) if b else a for a, b in zip(owner.args, batched, strict=True)
        )

        def f(pp: dict[str, Tensor]) -> Tensor:
            return functional_call(module, pp, args, kwargs)

        _, pullback = vjp(f, p)
        return vmap(lambda gg: pullback(gg.unsqueeze(0))[0])(g)

    xs_all = tuple(a for a, b in zip(owner.args, batched, strict=True) if b)
    step = max(1, budget // max(1, M * n_params))
    chunks = []
    for b0 in range(0, B, step):
        xs = tuple(a[b0 : b0 + step] for a in xs_all)
        grads = vmap(per_sample, in_dims=(None, 0, 1))(params, xs, G[:, b0 : b0 + step])
        flat = torch.cat([grads[k].flatten(2) for k in params], dim=2)  # (b, M, P)
        chunks.append(flat.transpose(0, 1))
    return torch.cat(chunks, dim=1)


def _dense_owner_gram(owner: _Owner, G: Tensor, B: int, budget: int) -> Tensor:
    module, local = owner.module, set(owner.names)
    has_w, has_b = "weight" in local, "bias" in local
    conv = {}
    if isinstance(module, nn.Conv2d):
        conv = {
            "stride": module.stride,
            "padding": module.padding,
            "dilation": module.dilation,
            "groups": module.groups,
        }
        M, _, O = G.shape[:3]
        T, K = G.shape[3] * G.shape[4], module.weight[0].numel()
        pair_positions = B * B * T * T
        kernel_cost = pair_positions * (K + M * O)
        if (
            has_w
            and use_grouped(M, owner.args[0].shape[1], T)
            and (kernel_cost >= M * B * O * K * (T + B) or pair_positions > 4 * budget)
        ):
            return grouped_conv_gram(owner.args[0], G, module.weight.shape, conv, has_b, budget)
        G = G.flatten(3)  # (M, B, Cout, T)
    A = dense_inputs("conv2d" if conv else "linear", owner.args[0], module.weight, conv)
    if not conv:
        G = G.reshape(G.shape[0], B, A.shape[1], -1).transpose(2, 3)
    return dense_gram(A, G, "weight" in local, "bias" in local, budget)


def structured_gram(
    model: nn.Module,
    x: Tensor,
    primals: dict[str, Tensor],
    cotangents: Callable[[int], Tensor] | None = None,
    *,
    create_graph: bool,
    output_fn: Callable[[Tensor], Tensor],
    budget: int = DEFAULT_BUDGET,
) -> tuple[Tensor, Tensor]:
    """Gram ``sum_m (J^T u_m)(J^T u_m)^T`` over the batch for cotangent rows ``u_m`` (M, C).

    ``cotangents(C)`` builds the (M, C) rows once the output size is known; None means ``I_C``,
    i.e. the exact empirical NTK.  ``primals`` maps parameter names to the tensors to
    differentiate (they must require grad); they are swapped into ``model`` with
    ``functional_call``, so frozen teachers are differentiated through detached copies.
    Returns ``(gram, model output)`` so callers can reuse the forward.
    """
    names = list(primals)
    clone = model in _NEEDS_CLONE
    raw, owners, counter = _record(model, names, primals, x, clone=clone)
    if not clone and any(
        o.output is not None and o.output._version != o.version for o in owners.values()
    ):
        _NEEDS_CLONE.add(model)  # an in-place op overwrote a captured output: run again
        raw, owners, counter = _record(model, names, primals, x, clone=True)
    out = output_fn(raw)
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(f"output_fn must return (B, C); got {tuple(out.shape)}")
    owners = _promote(owners)
    for owner in owners.values():
        if owner.calls != 1 or owner.output is None or not owner.output.requires_grad:
            raise Unsupported(f"module {owner.path!r} called {owner.calls} times / non-tensor")
    B, C = out.shape
    cot = torch.eye(C) if cotangents is None else cotangents(C)
    if cot.dim() != 2 or cot.shape[1] != C:
        raise ValueError(f"cotangents must be (M, {C}), got {tuple(cot.shape)}")
    M = cot.shape[0]

    plans: list[tuple[str, _Owner, list[Tensor], Any]] = []
    for owner in owners.values():
        if _is_dense(owner):
            plans.append(("dense", owner, [owner.output], None))
            continue
        calls = lifted_calls(owner, [primals[full] for full in owner.names.values()])
        if calls:
            pools = [counter.pool_after(c) for c in calls]
            outs = [c.output if p is None else p.output for c, p in zip(calls, pools, strict=True)]
            plans.append(("lifted", owner, outs, (calls, pools)))
        else:
            plans.append(("generic", owner, [owner.output], None))
    targets = [t for plan in plans for t in plan[2]]
    grads = torch.autograd.grad(
        out,
        targets,
        grad_outputs=cot.to(out)[:, None, :].expand(M, B, C),
        is_grads_batched=True,
        retain_graph=True,
        create_graph=create_graph,
        allow_unused=True,
    )
    gram = torch.zeros(B, B, dtype=out.dtype, device=out.device)
    jac_rows = []
    at = 0
    for kind, owner, outs, extra in plans:
        gs, at = list(grads[at : at + len(outs)]), at + len(outs)
        if kind == "lifted":
            if any(g is not None for g in gs):
                calls, pools = extra
                part = lifted_rows_or_gram(owner, calls, gs, primals, B, budget, pools)
                if part.dim() == 2:
                    gram = gram + part
                else:
                    jac_rows.append(part)
        elif gs[0] is None:
            continue
        elif kind == "dense":
            gram = gram + _dense_owner_gram(owner, gs[0], B, budget)
        else:
            jac_rows.append(_generic_jacobian(owner, primals, gs[0], budget))
    if jac_rows:
        J = torch.cat(jac_rows, dim=2)
        gram = gram + sum_gram(J)
    return gram, raw
