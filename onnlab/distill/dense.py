"""Gram contributions of dense layers (Linear, Conv2d) from layer inputs and output-gradients.

For a dense map y = W a (+ b) the per-sample gradient of output direction m is the outer product
g_m(x) a(x)^T (summed over positions T for convolutions), so the Gram needs no per-sample
gradient when T = 1 -- ``(G G^T) * (A A^T)`` -- and, for convolutions, either the kernel form
(``B^2 T^2`` pairs of positions, cheap for late layers) or materialised per-sample gradients
(cheap for early layers with few weights).  The per-sample weight-gradients themselves come from
patches + batched matmul or from one grouped ``convolution_backward``, whichever is faster for
the shape (measured; see ``use_grouped``).

Layouts: A (B, T, K) inputs/patches, G (M, B, O, T) output-gradients for M output directions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


class Unsupported(RuntimeError):
    """The model uses a pattern the structured engine cannot handle (weights reused, ...)."""


def patches(a: Tensor, conv: dict[str, Any], kernel: tuple[int, int]) -> Tensor:
    """(B, T, Cin*kh*kw) conv input patches as strided views (F.unfold is ~100x slower here)."""
    stride, padding, dilation = conv["stride"], conv["padding"], conv["dilation"]
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif all(k % 2 == 1 for k in kernel):
            padding = tuple(d * (k // 2) for d, k in zip(dilation, kernel, strict=True))
        else:
            raise Unsupported("'same' padding with an even kernel")
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = padding, stride, dilation, kernel
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph))
    win = a.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    win = win[..., ::dh, ::dw]  # (B, C, Ho, Wo, kh, kw)
    b, c, ho, wo = win.shape[:4]
    return win.permute(0, 2, 3, 1, 4, 5).reshape(b, ho * wo, c * kh * kw)


def pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def numeric_padding(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple:
    if not isinstance(padding, str):
        return pair(padding)
    if padding == "valid":
        return (0, 0)
    if all(k % 2 == 1 for k in kernel):
        return tuple(d * (k // 2) for d, k in zip(dilation, kernel, strict=True))
    raise Unsupported("'same' padding with an even kernel")


def use_grouped(M: int, in_channels: int, positions: int) -> bool:
    """Per-sample conv weight-grads by grouped convolution_backward or by patches + bmm.

    Measured on one CPU thread (B = 16): the grouped kernel wins with many output positions
    (T >= 64 for one output direction, T >= 128 for ten) on wide inputs -- no 9x patch copy; with
    few positions (late CifarNet/LeNet layers, T = 16-64) its M*B*Cout tiny groups make it
    2-4x slower than patches + bmm (LeNet conv2, ten directions: 94 vs 37 ms; CifarNet's last
    conv, one direction: 197 vs 111 ms).  Patches + bmm also win for the frontends (1-3 input
    channels, 10 output directions), where the grouped kernel must replicate the input M times.
    """
    return (M == 1 or in_channels >= 16) and positions >= (64 if M == 1 else 128)


def sum_gram(J: Tensor) -> Tensor:
    """sum_m J_m J_m^T for per-sample rows J (M, B, P).

    A batched matmul reads J in place; ``einsum("mip,mjp->ij")`` first copies J to (B, M*P),
    which costs more than the product itself for wide layers.
    """
    if J.shape[0] == 1:
        return J[0] @ J[0].T
    return torch.bmm(J, J.transpose(1, 2)).sum(0)


def conv_per_sample(a: Tensor, G: Tensor, weight_shape: torch.Size, conv: dict) -> Tensor:
    """(M, B, O, Cin*kh*kw) per-sample weight gradients via one grouped convolution_backward."""
    M, B, O = G.shape[:3]
    cin = a.shape[1]
    stride, dilation = pair(conv["stride"]), pair(conv["dilation"])
    padding = numeric_padding(conv["padding"], tuple(weight_shape[-2:]), dilation)
    inp = a.unsqueeze(0).expand(M, *a.shape).reshape(1, M * B * cin, *a.shape[2:])
    go = G.reshape(1, M * B * O, *G.shape[3:])
    _, gw, _ = torch.ops.aten.convolution_backward(
        go,
        inp,
        a.new_zeros(()).expand(M * B * O, cin, *weight_shape[-2:]),  # only its shape is read
        None,
        list(stride),
        list(padding),
        list(dilation),
        False,
        [0, 0],
        M * B,
        [False, True, False],
    )
    return gw.view(M, B, O, -1)


def dense_inputs(kind: str, a: Tensor, weight: Tensor, conv: dict[str, Any]) -> Tensor:
    """Layer input as (B, T, K) rows matching a (O, K) weight view."""
    if kind == "linear":
        return a.reshape(a.shape[0], -1, weight.shape[-1])
    if conv["groups"] != 1 or a.dim() != 4:
        raise Unsupported("grouped or unbatched conv2d")
    conv = {k: (v if isinstance(v, str) else pair(v)) for k, v in conv.items() if k != "groups"}
    return patches(a, conv, tuple(weight.shape[-2:]))


def dense_jacobian(A: Tensor, G: Tensor, has_w: bool, has_b: bool) -> Tensor:
    """Per-sample Jacobian rows (M, B, P) of a dense map: inputs A (B,T,K), grads G (M,B,O,T)."""
    parts = []
    if has_w:
        parts.append(torch.einsum("mbot,btk->mbok", G, A).flatten(2))
    if has_b:
        parts.append(G.sum(3))
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def dense_gram(A: Tensor, G: Tensor, has_w: bool, has_b: bool, budget: int) -> Tensor:
    """Gram contribution of a dense map (A (B,T,K), G (M,B,O,T)), kernel or materialised form."""
    M, B, O, T = G.shape
    K = A.shape[2]
    if T == 1:
        gg = torch.einsum("mio,mjo->ij", G[..., 0], G[..., 0])
        if not has_w:
            return gg
        aa = A[:, 0] @ A[:, 0].T
        return gg * (aa + 1.0) if has_b else gg * aa
    pair_positions = B * B * T * T
    kernel_cost = pair_positions * (K + M * O)
    mat_cost = M * B * O * K * (T + B)
    if kernel_cost < mat_cost and pair_positions <= 4 * budget:
        gg = torch.einsum("miot,mjos->ijts", G, G)
        out = gg.sum((2, 3)) if has_b else torch.zeros(B, B, dtype=G.dtype, device=G.device)
        if has_w:
            out = out + (torch.einsum("itk,jsk->ijts", A, A) * gg).sum((2, 3))
        return out
    step = max(1, budget // max(1, B * O * (K + 1)))
    out = torch.einsum("miot,mjos->ij", G, G) if has_b else None  # bias rows: sum over t, s
    if has_w:
        for m0 in range(0, M, step):
            J = dense_jacobian(A, G[m0 : m0 + step], True, False)
            part = sum_gram(J)
            out = part if out is None else out + part
    return out


def grouped_conv_gram(
    a: Tensor, G: Tensor, weight_shape: torch.Size, conv: dict, has_b: bool, budget: int
) -> Tensor:
    """Materialised conv Gram with per-sample weight-grads from grouped convolution_backward."""
    M, B, O = G.shape[:3]
    step = max(1, budget // max(1, B * weight_shape.numel()))
    out = None
    for m0 in range(0, M, step):
        J = conv_per_sample(a, G[m0 : m0 + step], weight_shape, conv).flatten(2)
        part = sum_gram(J)
        out = part if out is None else out + part
    if has_b:  # bias rows are the output-gradients summed over positions
        gb = G.flatten(3).sum(3)
        out = out + torch.einsum("mio,mjo->ij", gb, gb)
    return out
