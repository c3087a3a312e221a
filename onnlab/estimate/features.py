"""Image patches under the optics, their statistics, and chunked optical Gram matrices.

The optical feature of PSF p at sensor position s is ``p . P_s(x)`` where ``P_s(x)`` is the
(C, k, k) neighbourhood of s, mirrored (incoherent imaging is a TRUE convolution). Sensor
binning averages positions, so the binned feature of cell t is ``p . Pbar_t(x)`` with
``Pbar_t`` the mean patch over the cell. ActNorm then subtracts ``p . abar`` (abar = mean
binned patch over the training set) and divides by ``sqrt(p^T S p)`` (S = their covariance).

Every kernel of the estimator is therefore ``(1/T) sum_t U_t(x)^T M U_t(x')`` with
``U_t = Pbar_t - abar``. Factoring ``M = L L^T`` (r <= C k^2 columns, "eigen-PSFs") turns
it into an ordinary inner product of r * T features per image (`OpticalFeatures`); for K <= C k^2
actual PSFs the K PSFs themselves are the smaller basis. Features are computed by one strided
convolution with the binning folded into the kernel (`binned_response`), never as an explicit
patch tensor (3-20x cheaper), and Gram blocks are accumulated in float64, chunked over rows
and images so thousands of images fit in a few hundred MB. Patches themselves are only formed
for the training-set statistics (`patch_statistics`) and the pixelwise segmentation readout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_BUDGET_BYTES = 1 << 27  # 128 MiB per working block


@dataclass(frozen=True)
class PatchGeometry:
    """Shape of the optical layer and binning: what one feature sees and how many cells."""

    in_channels: int
    image_hw: tuple[int, int]
    kernel_px: int
    pool: int = 1

    def __post_init__(self) -> None:
        h, w = self.image_hw
        if self.kernel_px < 1:
            raise ValueError(f"kernel_px must be >= 1, got {self.kernel_px}")
        if self.pool < 1 or h % self.pool or w % self.pool:
            raise ValueError(
                f"pool must be >= 1 and divide image_hw {self.image_hw}, got {self.pool}"
            )

    @property
    def n_psf(self) -> int:
        """Entries of one PSF, C * k * k (the size of M)."""
        return self.in_channels * self.kernel_px**2

    @property
    def cells_hw(self) -> tuple[int, int]:
        """Binned feature-map size per kernel."""
        return self.image_hw[0] // self.pool, self.image_hw[1] // self.pool

    @property
    def n_cells(self) -> int:
        """T, binned sensor cells per kernel."""
        return self.cells_hw[0] * self.cells_hw[1]

    def chunk_images(self, per_image_values: int, budget: int = DEFAULT_BUDGET_BYTES) -> int:
        """Images per chunk so that a float64 block of `per_image_values` fits the budget."""
        return max(1, budget // (8 * max(1, per_image_values)))


def binned_patches(x: torch.Tensor, geom: PatchGeometry) -> torch.Tensor:
    """(B, C, H, W) → (B, C*k*k, T) float64: ``Pbar_t(x)`` in PSF index order.

    Index order equals ``psfs.flatten(1)`` so that ``psf.flatten() @ result`` is the binned
    output of ``optical_conv2d`` (tested against it, even kernels included).
    """
    k, b = geom.kernel_px, geom.pool
    before, after = k - 1 - k // 2, k // 2  # 'same' padding of onnlab.optics.convolution
    x = F.pad(x.to(torch.float64), (before, after, before, after))
    # Binning first: the mean over a cell of shifted pixels is a stride-1 box average sampled
    # every `pool` pixels, so the patch tensor is pool^2 times smaller than unbinned patches.
    # (Tensor.unfold + copy; F.unfold's im2col is ~10x slower on CPU for these shapes.)
    if b > 1:
        x = F.avg_pool2d(x, b, stride=1)
    win = x.unfold(2, k, b).unfold(3, k, b)  # (B, C, Ty, Tx, k, k)
    win = win.flip(-2, -1).permute(0, 1, 4, 5, 2, 3)
    return win.reshape(x.shape[0], geom.n_psf, geom.n_cells)


def patch_statistics(
    images: torch.Tensor, geom: PatchGeometry, budget: int = DEFAULT_BUDGET_BYTES
) -> tuple[torch.Tensor, torch.Tensor]:
    """(abar (n,), S (n, n)): mean and unbiased covariance of binned patches over images × cells.

    With these, any PSF's ActNorm statistics are ``mean = p . abar`` and
    ``std^2 = p^T S p`` — exactly what `ActNorm.initialise` computes on the training features.
    """
    n = geom.n_psf
    total = torch.zeros(n, dtype=torch.float64)
    outer = torch.zeros(n, n, dtype=torch.float64)
    count = 0
    step = geom.chunk_images(n * geom.image_hw[0] * geom.image_hw[1], budget)
    for i in range(0, images.shape[0], step):
        u = binned_patches(images[i : i + step], geom).transpose(1, 2).reshape(-1, n)
        total += u.sum(0)
        outer += u.T @ u
        count += u.shape[0]
    mean = total / count
    scatter = (outer - count * torch.outer(mean, mean)) / max(count - 1, 1)
    return mean, 0.5 * (scatter + scatter.T)


@dataclass(frozen=True)
class OpticalFeatures:
    """x -> (B, r * T) features whose inner products are the optical kernel K0.

    Row j is a PSF-like vector w_j (n,) with an offset o_j and a scale s_j; its feature at
    cell t is ``s_j (w_j . Pbar_t(x) - o_j)``. Two uses: the K actual PSFs with ActNorm's
    per-kernel mean and 1 / (std sqrt(K T)) (finite width, no patch statistics needed), or
    the r eigen-PSFs of a moment M = L L^T with offsets ``L^T abar`` and scale 1 / sqrt(T)
    (infinite width, or K > C k^2 where the factor is the smaller basis).
    """

    weights: torch.Tensor  # (r, n) float64
    offset: torch.Tensor  # (r,) float64
    scale: torch.Tensor  # (r,) float64
    geom: PatchGeometry

    @classmethod
    def from_factor(
        cls, factor: torch.Tensor, geom: PatchGeometry, centre: torch.Tensor | None
    ) -> OpticalFeatures:
        """Eigen-PSF features of ``K0 = (1/T) sum_t U_t^T L L^T U_t'`` (factor L (n, r))."""
        r = factor.shape[1]
        offset = torch.zeros(r, dtype=torch.float64) if centre is None else centre @ factor
        scale = torch.full((r,), geom.n_cells**-0.5, dtype=torch.float64)
        return cls(factor.T.contiguous(), offset, scale, geom)

    @property
    def rank(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        """Features per image, r * T."""
        return self.rank * self.geom.n_cells

    def rows(self, j: int, k: int) -> OpticalFeatures:
        """The features of rows j:k only (chunking over rows bounds memory)."""
        return OpticalFeatures(self.weights[j:k], self.offset[j:k], self.scale[j:k], self.geom)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, r * T) float64, in (row, cell) order."""
        out = binned_response(x, self.weights, self.geom, self.offset, self.scale)
        return out.reshape(x.shape[0], -1)


def binned_response(
    x: torch.Tensor,
    weights: torch.Tensor,
    geom: PatchGeometry,
    offset: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, r, T) float64: ``s_j (w_j . Pbar_t(x) - o_j)`` for each row w_j (n,) of `weights`.

    The same numbers as ``weights @ binned_patches(x)`` (then shifted and scaled), computed
    without the patch tensor: binning is a b x b box average of the convolution's output, so it
    folds into the kernel (each flipped PSF — incoherent imaging is a TRUE convolution — fully
    convolved with the box, (k + b - 1)^2 taps), and the affine part folds into the kernel and
    the bias: one strided ``conv2d`` gives the final features. It runs in the images' dtype:
    float32 data costs ~10x less than float64 on CPU and its ~1e-7 rounding is far below any
    ridge the estimator selects; float64 images give float64-exact kernels (the tests compare
    against autograd at 1e-8).
    """
    k, b, c = geom.kernel_px, geom.pool, geom.in_channels
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    r = weights.shape[0]
    kernel = weights.to(torch.float64).reshape(r * c, 1, k, k).flip(-2, -1)
    if b > 1:
        box = torch.full((1, 1, b, b), 1.0 / b**2, dtype=torch.float64)
        kernel = F.conv_transpose2d(kernel, box)  # full convolution: (k + b - 1)^2 taps
    kernel = kernel.reshape(r, c, k + b - 1, k + b - 1)
    s = torch.ones(r, dtype=torch.float64) if scale is None else scale.to(torch.float64)
    bias = None if offset is None else (-offset.to(torch.float64) * s).to(dtype)
    kernel = (kernel * s[:, None, None, None]).to(dtype)
    before, after = k - 1 - k // 2, k // 2  # 'same' padding of onnlab.optics.convolution
    if k % 2:  # symmetric: the last window ends inside the padding either way
        out = F.conv2d(x.to(dtype), kernel, bias, stride=b, padding=before)
    else:
        xx = F.pad(x.to(dtype), (before, after + b - 1, before, after + b - 1))
        out = F.conv2d(xx, kernel, bias, stride=b)
    return out.reshape(x.shape[0], r, geom.n_cells).to(torch.float64)


@dataclass
class GramBlocks:
    """Optical kernel K0 on the training set and between each other set and the training set.

    `diag_*` are K0(x, x) (needed by nonlinear backend layers).
    """

    train: torch.Tensor
    cross: list[torch.Tensor]
    diag_train: torch.Tensor
    diag_cross: list[torch.Tensor]


def optical_gram(
    train_images: torch.Tensor,
    other_images: Sequence[torch.Tensor],
    features: OpticalFeatures,
    budget: int = DEFAULT_BUDGET_BYTES,
    square: bool = True,
    product_dtype: torch.dtype = torch.float64,
) -> GramBlocks:
    """K0(x, x') = <phi(x), phi(x')> for train x train and other x train.

    Chunked over feature rows (so the training features of one chunk fit `budget`) and over
    images; accumulated in float64. ``square=False`` skips the train x train block (left
    zero; its diagonal is still computed) when only the cross blocks are needed.
    ``product_dtype`` is the precision of the feature products (the diagonals stay float64):
    float32 halves their cost, with the ~1e-7 rounding that `binned_response` already accepts.
    """
    geom = features.geom
    n_train, r, t = train_images.shape[0], features.rank, geom.n_cells
    r_step = max(1, min(r, budget // (8 * t * max(1, n_train))))
    img_step = geom.chunk_images(
        geom.in_channels * geom.image_hw[0] * geom.image_hw[1] + t * r_step, budget
    )
    gram = torch.zeros(n_train, n_train, dtype=torch.float64)
    diag = torch.zeros(n_train, dtype=torch.float64)
    cross = [torch.zeros(o.shape[0], n_train, dtype=torch.float64) for o in other_images]
    dcross = [torch.zeros(o.shape[0], dtype=torch.float64) for o in other_images]
    for j in range(0, r, r_step):
        phi = features.rows(j, j + r_step)
        ftrain = torch.cat(
            [phi(train_images[i : i + img_step]) for i in range(0, n_train, img_step)]
        )
        diag += ftrain.square().sum(1)
        ftrain = ftrain.to(product_dtype)
        if square:
            gram += ftrain @ ftrain.T
        for images, block, dblock in zip(other_images, cross, dcross, strict=True):
            for i in range(0, images.shape[0], img_step):
                f = phi(images[i : i + img_step])
                dblock[i : i + img_step] += f.square().sum(1)
                block[i : i + img_step] += f.to(product_dtype) @ ftrain.T
        del ftrain
    return GramBlocks(0.5 * (gram + gram.T), cross, diag, dcross)


def input_metric(features: OpticalFeatures, budget: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """A (D + 1, D + 1) with ``K0(x, x') = [x, 1]^T A [x', 1]`` (D = C * H * W pixels).

    The optics and binning are linear in the image and ActNorm is affine, so the optical
    kernel is a quadratic form of the pixels: its rank never exceeds D + 1 whatever K is. When
    D + 1 < n this makes a primal solve in pixel space cheaper than the n x n dual one.
    Built column block by column block from the features of the D basis images.
    """
    geom = features.geom
    c, (h, w) = geom.in_channels, geom.image_hw
    d, r, t = c * h * w, features.rank, geom.n_cells
    r_step = max(1, min(r, budget // (8 * t * (d + 1))))
    metric = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    img_step = geom.chunk_images(d + t * r_step, budget)
    zero = torch.zeros(1, c, h, w, dtype=torch.float64)
    for j in range(0, r, r_step):
        phi = features.rows(j, j + r_step)
        offset = phi(zero)  # f(0): the affine part
        rows = []
        for i in range(0, d, img_step):
            basis = torch.zeros(min(img_step, d - i), d, dtype=torch.float64)
            basis[:, i : i + img_step] = torch.eye(basis.shape[0], dtype=torch.float64)
            rows.append(phi(basis.view(-1, c, h, w)) - offset)
        block = torch.cat([*rows, offset])
        metric += block @ block.T
    return 0.5 * (metric + metric.T)


def pixel_features(
    images: torch.Tensor, geom: PatchGeometry, factor: torch.Tensor, centre: torch.Tensor | None
) -> torch.Tensor:
    """(B * H * W, r) per-pixel features L^T U_s(x) for a pixelwise readout (no binning)."""
    if geom.pool != 1:
        raise ValueError(f"pixel features need pool=1, got {geom.pool}")
    u = binned_patches(images, geom)
    if centre is not None:
        u = u - centre[None, :, None]
    return torch.einsum("bnt,nr->btr", u, factor).reshape(-1, factor.shape[1])


def _window_cover(n: int, geom: PatchGeometry) -> torch.Tensor:
    """(n, n) sum over (cell, tap) of r r^T / b^2, r = the pixels one binned tap averages.

    Along one axis, tap i of cell t averages padded positions t*b + i + a (a < b), i.e. image
    positions t*b + i + a - before; positions in the padding contribute zero.
    """
    k, b = geom.kernel_px, geom.pool
    before = k - 1 - k // 2
    cover = torch.zeros(n, n, dtype=torch.float64)
    for t in range(n // b):
        for i in range(k):
            r = torch.zeros(n, dtype=torch.float64)
            lo = t * b + i - before
            r[max(lo, 0) : max(min(lo + b, n), 0)] = 1.0
            cover += torch.outer(r, r)
    return cover / b**2


@dataclass(frozen=True)
class PatchKernel:
    """The isotropic patch kernel ``(1/T) sum_t (Pbar_t(x) - c) . (Pbar_t(x') - c)`` in pixels.

    It is the optical kernel of the moment M = I (every PSF direction equally), and the NTK
    term of a trainable PSF layer (the gradient of a binned response w.r.t. its PSF is the
    binned patch). Computing it from C k^2 eigen-PSF features costs C k^2 T values per image;
    here it is a quadratic form of the pixels, and a separable one: the sum over cells and
    taps of box-averaged windows is ``A_y ⊗ A_x`` per channel (`_window_cover`), so
    ``x^T A x' = <L_y x L_x, L_y x' L_x> / T`` with ``L = A^(1/2)`` — C H W features per image.
    The centring adds ``- v.x - v.x' + |c|^2`` with ``v.x = (1/T) sum_t c . Pbar_t(x)``.
    """

    left: torch.Tensor  # (H, H) A_y^(1/2) / T^(1/4)
    right: torch.Tensor  # (W, W) A_x^(1/2) / T^(1/4)
    linear: torch.Tensor  # (C, H, W) v
    constant: float  # |c|^2

    @classmethod
    def build(cls, geom: PatchGeometry, centre: torch.Tensor | None) -> PatchKernel:
        (h, w), t = geom.image_hw, geom.n_cells

        def root(a: torch.Tensor) -> torch.Tensor:
            evals, evecs = torch.linalg.eigh(a)
            return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T * t**-0.25

        c, shape = geom.in_channels, (1, geom.in_channels, h, w)
        if centre is None:
            linear, constant = torch.zeros(c, h, w, dtype=torch.float64), 0.0
        else:  # v = gradient of the linear map x -> (1/T) sum_t c . Pbar_t(x)
            x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
            (binned_patches(x, geom).sum(-1) @ centre.to(torch.float64) / t).sum().backward()
            linear, constant = x.grad[0].detach(), float(centre.to(torch.float64).square().sum())
        return cls(root(_window_cover(h, geom)), root(_window_cover(w, geom)), linear, constant)

    def features(
        self, images: torch.Tensor, dtype: torch.dtype = torch.float64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z (B, C H W), v.x (B,)) with K(x, x') = z.z' - v.x - v.x' + |c|^2.

        z is computed in float64 and stored in ``dtype``, the precision of `block`'s product.
        """
        x = images.to(torch.float64)
        z = self.left @ x @ self.right
        return z.flatten(1).to(dtype), (x * self.linear).flatten(1).sum(1)

    def block(
        self, rows: tuple, cols: tuple, scale: float = 1.0, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """``scale`` K(rows, cols) from two `features` results, float64, built in place.

        ``dtype`` is the precision of the one large product z z'^T (float32 halves its cost at
        a ~1e-6 relative error; what that does to an estimate: `learning_curve.PRODUCT_DTYPE`).
        """
        (zr, lr), (zc, lc) = rows, cols
        product = (zr.to(dtype) @ zc.to(dtype).T).to(torch.float64)
        out = product.sub_(lr[:, None]).sub_(lc[None, :]).add_(self.constant)
        return out if scale == 1.0 else out.mul_(scale)

    def diagonal(self, feats: tuple) -> torch.Tensor:
        """K(x, x) for each image of a `features` result."""
        z, lin = feats
        return z.to(torch.float64).square().sum(1) - 2 * lin + self.constant
