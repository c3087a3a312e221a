"""On-disk schema of a capture store: names, dtypes, checksums and the run identity.

Kept apart from `store.py` so the format is readable in one place: anyone writing a reader in
another language (or auditing a file with `h5dump`) needs exactly this module.

Layout of one `RUN.h5` (all datasets contiguous and allocated when the file is created, so a
commit writes raw bytes at fixed offsets and never touches HDF5 metadata):

- root attrs: `magic`, `schema_version`, `content` ("frames" | "features"), `meta_json`
  (run metadata: bench config, calibration id, model id, versions, dataset/split/fraction/seed),
  `requested_sha256`, `chunk_size`, `created_at`.
- `requested_indices` (N,) int64: the dataset indices asked for, in capture order. Row i of every
  per-frame dataset belongs to `requested_indices[i]`, which makes duplicates and gaps impossible.
- per-frame rows (N, ...): `data` (frames (Hs, Ws) or feature tiles (K, H, W)), `indices`,
  `targets`, `frame_id`, `timestamp_s`, `exposure_s`, `pattern_id` (fixed-length bytes),
  `attempts` (how many tries the frame took).
- `chunks` (N,) records: seq, start, count, sha256 of the chunk's rows, committed_at, crc32 of
  the record itself. The committed prefix is the longest run of valid records 0, 1, 2, ...
- `completion` scalar fixed-length bytes: JSON completion record (empty until the run finished).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import h5py
import numpy as np

MAGIC = "onnlab-capture-store"
SCHEMA_VERSION = 1
PATTERN_ID_BYTES = 64
COMPLETION_BYTES = 8192

#: Per-frame datasets in checksum order (the order is part of the format).
ROW_FIELDS = (
    "data",
    "indices",
    "targets",
    "frame_id",
    "timestamp_s",
    "exposure_s",
    "pattern_id",
    "attempts",
)

CHUNK_DTYPE = np.dtype(
    [
        ("seq", "<i8"),
        ("start", "<i8"),
        ("count", "<i8"),
        ("sha256", f"S{64}"),
        ("committed_at", "<f8"),
        ("crc32", "<u4"),
    ]
)

Content = Literal["frames", "features"]

#: Metadata keys that define WHAT a run captures; a resume must agree on all of them.
IDENTITY_KEYS = ("dataset", "split", "calibration_id", "bench_config_sha256", "model_id")


def indices_sha256(indices: np.ndarray) -> str:
    """Hash of the requested index list (int64 little-endian bytes, order matters)."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


def rows_sha256(rows: dict[str, np.ndarray]) -> str:
    """sha256 over the bytes of one chunk's rows, field by field in `ROW_FIELDS` order."""
    digest = hashlib.sha256()
    for name in ROW_FIELDS:
        digest.update(np.ascontiguousarray(rows[name]).tobytes())
    return digest.hexdigest()


def record_crc(seq: int, start: int, count: int, sha256: bytes, committed_at: float) -> int:
    """crc32 of a chunk record's fields, so a torn (half-written) record is recognisable."""
    packed = np.array([(seq, start, count, sha256, committed_at, 0)], dtype=CHUNK_DTYPE)
    return zlib.crc32(packed.tobytes()[: CHUNK_DTYPE.itemsize - 4])


def make_record(seq: int, start: int, count: int, sha256: str, committed_at: float) -> np.ndarray:
    """One `chunks` row with its own crc32 filled in."""
    sha = sha256.encode("ascii")
    crc = record_crc(seq, start, count, sha, committed_at)
    return np.array([(seq, start, count, sha, committed_at, crc)], dtype=CHUNK_DTYPE)


def record_is_valid(record: np.void, seq: int, start: int) -> bool:
    """A record commits rows only if it is intact and continues the chain exactly."""
    if int(record["seq"]) != seq or int(record["start"]) != start or int(record["count"]) <= 0:
        return False
    crc = record_crc(
        seq,
        start,
        int(record["count"]),
        bytes(record["sha256"]),
        float(record["committed_at"]),
    )
    return crc == int(record["crc32"])


@dataclass
class CaptureSpec:
    """Everything that defines a capture run; two runs with equal specs are the same run.

    `item_shape`/`item_dtype` describe one stored row of `data` (a camera frame (Hs, Ws) or
    feature tiles (K, H, W)); `target_shape` is () for class labels, (1, H, W) for masks.
    """

    requested_indices: np.ndarray
    content: Content
    item_shape: tuple[int, ...]
    item_dtype: str
    target_shape: tuple[int, ...] = ()
    target_dtype: str = "int64"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.requested_indices = np.ascontiguousarray(self.requested_indices, dtype=np.int64)
        if self.requested_indices.ndim != 1 or self.requested_indices.size == 0:
            raise ValueError("requested_indices must be a non-empty 1-D array")
        if np.unique(self.requested_indices).size != self.requested_indices.size:
            raise ValueError("requested_indices must not contain duplicates")
        if self.content not in ("frames", "features"):
            raise ValueError(f"content must be 'frames' or 'features', got {self.content!r}")
        self.item_shape = tuple(int(s) for s in self.item_shape)
        self.target_shape = tuple(int(s) for s in self.target_shape)
        self.item_dtype = np.dtype(self.item_dtype).str
        self.target_dtype = np.dtype(self.target_dtype).str

    @property
    def requested_sha256(self) -> str:
        return indices_sha256(self.requested_indices)

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must match (the rest of `meta` is informational)."""
        ident: dict[str, Any] = {
            "requested_sha256": self.requested_sha256,
            "content": self.content,
            "item_shape": list(self.item_shape),
            "item_dtype": self.item_dtype,
            "target_shape": list(self.target_shape),
            "target_dtype": self.target_dtype,
        }
        ident.update({k: self.meta.get(k) for k in IDENTITY_KEYS})
        return json.loads(json.dumps(ident, default=str))


def row_dtypes(spec: CaptureSpec) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-row shape and dtype of every per-frame dataset."""
    return {
        "data": (spec.item_shape, np.dtype(spec.item_dtype)),
        "indices": ((), np.dtype("<i8")),
        "targets": (spec.target_shape, np.dtype(spec.target_dtype)),
        "frame_id": ((), np.dtype("<i8")),
        "timestamp_s": ((), np.dtype("<f8")),
        "exposure_s": ((), np.dtype("<f8")),
        "pattern_id": ((), np.dtype(f"S{PATTERN_ID_BYTES}")),
        "attempts": ((), np.dtype("<i4")),
    }


def preallocated(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Contiguous dataset with all space allocated now, so later writes never touch metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    group.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)


def chain_sha256(digests: np.ndarray) -> str:
    """One digest for the whole run: sha256 over the chunk digests in order."""
    h = hashlib.sha256()
    for d in digests:
        h.update(bytes(d))
    return h.hexdigest()
