"""GDSII layout of a quantised phase mask, and its re-import onto the phase grid.

Layout conventions (written into the export's metadata too):
* units: 1 user unit = 1 um, database precision 1 nm (`gdstk.Library(unit=1e-6, precision=1e-9)`);
* coordinates are the optics' own: origin at the aperture centre (the optical axis of the
  array), GDS x = optics x (column index grows with x), GDS y = optics y (row index grows with
  y); each kernel's N x N sub-aperture sits at its centre from `kernel_layout` (Eq. 1), pixel
  (i, j) centred at (x_k + (j - N // 2) pitch, y_k + (i - N // 2) pitch) as in
  `onnlab.optics.grid`;
* one layer per height level: level l (height l * h_2pi / L) is layer ``LAYER_BASE + l``,
  datatype 0 — level 0 (no material added / etched to the floor) is written too, so that every
  pixel is claimed by exactly one layer and the import can verify it;
* a text label "K<k>" at each kernel centre on layer ``LABEL_LAYER``.

Pixels of one level are merged into polygons: run-length rectangles per row, then a boolean
union (gdstk), so a smooth design becomes a few polygons per level instead of N^2 squares.
The importer rasterises by pixel-centre point-in-polygon (`gdstk.inside`): a centre is never on
an edge (edges lie on pixel boundaries), so the round trip is exact for any design.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gdstk
import numpy as np

from onnlab.design.heights import check_levels

LAYER_BASE = 1
LABEL_LAYER = 100
UNIT_M = 1e-6
PRECISION_M = 1e-9
CELL_NAME = "ONNLAB_PHASE_MASK"


@dataclass(frozen=True)
class MaskGeometry:
    """Where the phase pixels are: kernel centres (K, 2) (y, x) in metres from the aperture
    centre, N samples per sub-aperture side at pitch_m."""

    centers_m: np.ndarray
    n: int
    pitch_m: float

    def __post_init__(self) -> None:
        centers = np.asarray(self.centers_m, dtype=np.float64)
        if centers.ndim != 2 or centers.shape[1] != 2:
            raise ValueError(f"centers_m must be (K, 2) (y, x) metres, got {centers.shape}")
        if int(self.n) < 1 or not (np.isfinite(self.pitch_m) and self.pitch_m > 0):
            raise ValueError(f"n must be >= 1 and pitch_m > 0, got {self.n}, {self.pitch_m}")
        object.__setattr__(self, "centers_m", centers)

    @property
    def n_kernels(self) -> int:
        return int(self.centers_m.shape[0])

    def pixel_centres_um(self, k: int) -> np.ndarray:
        """(N * N, 2) (x, y) pixel centres of kernel k in um, row-major (i, j)."""
        idx = (np.arange(self.n) - self.n // 2) * self.pitch_m
        yy, xx = np.meshgrid(idx + self.centers_m[k, 0], idx + self.centers_m[k, 1], indexing="ij")
        return np.stack([xx.ravel(), yy.ravel()], axis=1) / UNIT_M


def _rectangles(mask: np.ndarray, x0: float, y0: float, d: float) -> list[gdstk.Polygon]:
    """Run-length rectangles of a boolean (N, N) mask; pixel (i, j) spans
    [x0 + j d, x0 + (j + 1) d] x [y0 + i d, y0 + (i + 1) d] (um)."""
    rects = []
    for i, row in enumerate(mask):
        padded = np.concatenate([[False], row, [False]])
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        for j0, j1 in zip(edges[::2], edges[1::2], strict=True):
            rects.append(
                gdstk.rectangle((x0 + j0 * d, y0 + i * d), (x0 + j1 * d, y0 + (i + 1) * d))
            )
    return rects


def write_gds(
    path: str | Path,
    level_index: np.ndarray,
    geometry: MaskGeometry,
    levels: int,
    *,
    cell_name: str = CELL_NAME,
) -> dict:
    """Write the quantised mask (K, N, N) level indices as GDSII; returns a layer summary."""
    n_levels = check_levels(levels)
    idx = np.asarray(level_index)
    k, n = geometry.n_kernels, geometry.n
    if idx.shape != (k, n, n):
        raise ValueError(
            f"level_index must be ({k}, {n}, {n}) to match the geometry, got {idx.shape}"
        )
    if idx.min() < 0 or idx.max() >= n_levels:
        raise ValueError(f"level_index must lie in 0 .. levels-1 = {n_levels - 1}")
    lib = gdstk.Library(unit=UNIT_M, precision=PRECISION_M)
    cell = lib.new_cell(cell_name)
    d = geometry.pitch_m / UNIT_M
    counts = np.zeros(n_levels, dtype=int)
    for kk in range(k):
        cy, cx = geometry.centers_m[kk] / UNIT_M
        x0, y0 = cx - (n // 2 + 0.5) * d, cy - (n // 2 + 0.5) * d
        for level in range(n_levels):
            mask = idx[kk] == level
            if not mask.any():
                continue
            merged = gdstk.boolean(
                _rectangles(mask, x0, y0, d),
                [],
                "or",
                precision=PRECISION_M / UNIT_M,
                layer=LAYER_BASE + level,
                datatype=0,
            )
            cell.add(*merged)
            counts[level] += len(merged)
        cell.add(gdstk.Label(f"K{kk}", (cx, cy), layer=LABEL_LAYER))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lib.write_gds(str(path))
    return {
        "cell": cell_name,
        "unit_m": UNIT_M,
        "precision_m": PRECISION_M,
        "layers": {str(LAYER_BASE + lv): f"height level {lv}" for lv in range(n_levels)},
        "label_layer": LABEL_LAYER,
        "polygons_per_level": counts.tolist(),
        "bytes": path.stat().st_size,
    }


def read_gds(
    path: str | Path, geometry: MaskGeometry, levels: int, *, cell_name: str = CELL_NAME
) -> np.ndarray:
    """Rasterise a mask GDSII back onto the (K, N, N) phase grid as level indices.

    Each pixel centre is tested against every level's polygons; a pixel claimed by no layer or
    by more than one is an error (the file does not describe one height per pixel).
    """
    n_levels = check_levels(levels)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GDSII file not found: {path}")
    lib = gdstk.read_gds(str(path), unit=UNIT_M)
    cells = {c.name: c for c in lib.cells}
    if cell_name not in cells:
        raise ValueError(f"{path}: no cell {cell_name!r} (cells: {sorted(cells)})")
    polys = cells[cell_name].get_polygons()
    by_layer: dict[int, list] = {}
    for p in polys:
        by_layer.setdefault(p.layer, []).append(p)
    k, n = geometry.n_kernels, geometry.n
    out = np.full((k, n * n), -1, dtype=np.int64)
    claims = np.zeros((k, n * n), dtype=np.int64)
    for kk in range(k):
        pts = geometry.pixel_centres_um(kk)
        lo, hi = pts.min(0), pts.max(0)
        for level in range(n_levels):
            near = [
                p
                for p in by_layer.get(LAYER_BASE + level, [])
                if _overlaps(p.bounding_box(), lo, hi)
            ]
            if not near:
                continue
            inside = np.fromiter(gdstk.inside(pts, near), dtype=bool, count=len(pts))
            out[kk, inside] = level
            claims[kk] += inside
    if (claims != 1).any():
        bad = int((claims != 1).sum())
        raise ValueError(
            f"{path}: {bad} phase pixel(s) are covered by no or by several height layers; "
            "the file does not match this geometry (centres, n, pitch) or levels"
        )
    return out.reshape(k, n, n)


def _overlaps(box, lo: np.ndarray, hi: np.ndarray) -> bool:
    (x0, y0), (x1, y1) = box
    return not (x1 < lo[0] or x0 > hi[0] or y1 < lo[1] or y0 > hi[1])
