"""`CaptureStore`: one append-only, crash-safe HDF5 file per capture run.

Why this design: a capture of a few thousand frames takes minutes to hours on a real bench and
gets interrupted (Ctrl-C, a camera cable, `kill -9`, a power cut). HDF5 itself is not crash
safe: a process killed while the library rewrites its B-trees can leave an unreadable file. So
the store never changes HDF5 metadata after creation. Every dataset is allocated in full,
contiguously, when the file is created (the requested index list is known up front), and the
file is created under a temporary name and renamed into place only when complete. Afterwards a
commit only writes raw bytes at fixed offsets:

1. write the chunk's rows (data, index, target, provenance) into rows [start, start + n);
2. flush + fsync;
3. write the chunk record (seq, start, count, sha256 of the rows, time, crc32 of the record);
4. flush + fsync.

On open, the committed prefix is the longest chain of valid records 0, 1, 2, ...; rows past it
are ignored and will be overwritten (the "truncate the tail" step, without touching metadata).
A record that fails its crc at the end of the chain is a torn commit and is dropped; a bad
record followed by valid ones, a chunk whose rows no longer match their sha256, a file without
the magic, or a run with other requested indices is refused with a one-line `CaptureError`.
Resuming verifies the checksums of every committed chunk it builds on, through a read-only
open, BEFORE the file is opened for writing: a damaged file is refused untouched (byte for
byte). A file HDF5 cannot open is classified, not guessed from a substring: held by another
process (HDF5's "unable to lock file"), truncated (HDF5's end-of-file check: fewer bytes than
the superblock records), not HDF5 at all (no signature), or otherwise corrupt.
See `onnlab.capture.schema` for the exact layout.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from onnlab.capture import schema
from onnlab.capture.h5diagnose import why_unopenable
from onnlab.capture.schema import CHUNK_DTYPE, ROW_FIELDS, CaptureSpec
from onnlab.errors import CaptureError


@dataclass
class CaptureData:
    """The committed rows of a store, in capture order, as plain arrays."""

    data: np.ndarray
    indices: np.ndarray
    targets: np.ndarray
    provenance: dict[str, np.ndarray]
    content: str
    meta: dict[str, Any]


def _short(value: Any) -> str:
    """Hashes shortened for one-line messages."""
    text = repr(value)
    return text[:15] + "...'" if isinstance(value, str) and len(value) == 64 else text


def _fail(path: Path, why: str) -> CaptureError:
    return CaptureError(f"capture store {path}: {why}")


class CaptureStore:
    """Append-only capture file. Use `CaptureStore.open(path, spec)` to create or resume,
    `CaptureStore.read(path)` to load a finished (or partial) run for training.

    As a context manager, leaving the block commits the rows still buffered (also on Ctrl-C or a
    device error: every buffered row is a complete, valid capture) and closes the file.
    """

    def __init__(
        self, path: Path, file: h5py.File, spec: CaptureSpec, writable: bool, durable: bool
    ):
        self.path = path
        self._file = file
        self.spec = spec
        self.writable = writable
        self.durable = durable
        self.chunk_size = int(file.attrs["chunk_size"])
        self._dtypes = schema.row_dtypes(spec)
        self._pending: list[dict[str, np.ndarray]] = []
        self.n_committed = 0
        self.n_chunks = 0
        self.resumed_from = 0
        self._recover()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls, path: str | Path, spec: CaptureSpec, *, chunk_size: int = 64, durable: bool = True
    ) -> CaptureStore:
        """Create the store for `spec`, or resume it if `path` already holds the same run."""
        path = Path(path)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if not path.exists():
            cls._create(path, spec, chunk_size)
        else:
            cls._check_before_resume(path, spec)
        file = cls._h5open(path, "r+")
        try:
            on_disk = cls._read_spec(path, file)
            cls._check_identity(path, spec, on_disk)
            store = cls(path, file, on_disk, writable=True, durable=durable)
        except BaseException:
            file.close()
            raise
        store.resumed_from = store.n_committed
        return store

    @classmethod
    def _check_before_resume(cls, path: Path, spec: CaptureSpec) -> None:
        """Read-only (shared lock, nothing written): same run, intact chain, every committed
        chunk's sha256 verified. A resume must never build on damaged rows."""
        file = cls._h5open(path, "r", locking=True)
        try:
            on_disk = cls._read_spec(path, file)
            cls._check_identity(path, spec, on_disk)
            cls(path, file, on_disk, writable=False, durable=False).verify()
        finally:
            file.close()

    @staticmethod
    def _check_identity(path: Path, spec: CaptureSpec, on_disk: CaptureSpec) -> None:
        mine, theirs = spec.identity(), on_disk.identity()
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        if diff:
            shown = ", ".join(
                f"{k}: file {_short(theirs.get(k))} vs now {_short(mine[k])}" for k in diff
            )
            raise _fail(
                path,
                f"belongs to a different capture run ({shown}); "
                "rerun with the original arguments or choose a new --out",
            )

    @classmethod
    def read(cls, path: str | Path, *, verify: bool = True) -> CaptureStore:
        """Open read-only (checksums verified unless `verify=False`)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"capture store {path} does not exist")
        file = cls._h5open(path, "r")
        try:
            store = cls(path, file, cls._read_spec(path, file), writable=False, durable=False)
            if verify:
                store.verify()
        except BaseException:
            file.close()
            raise
        return store

    @staticmethod
    def _h5open(path: Path, mode: str, *, locking: bool | None = None) -> h5py.File:
        # Readers take no lock: the layout never changes after creation and a commit only
        # writes raw bytes, so a reader (a progress monitor, a training job) safely sees the
        # committed prefix while a capture is running. Writers lock, so two captures of the
        # same file are refused (a resume's read-only check locks too, for the same reason).
        try:
            return h5py.File(path, mode, locking=(mode != "r") if locking is None else locking)
        except OSError as exc:
            raise _fail(path, why_unopenable(path, exc)) from exc

    @staticmethod
    def _create(path: Path, spec: CaptureSpec, chunk_size: int) -> None:
        """Build the complete file under a temporary name, then rename: never half a store."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        n = spec.requested_indices.size
        with h5py.File(tmp, "w") as f:
            f.attrs["magic"] = schema.MAGIC
            f.attrs["schema_version"] = schema.SCHEMA_VERSION
            f.attrs["content"] = spec.content
            f.attrs["item_shape"] = np.asarray(spec.item_shape, dtype=np.int64)
            f.attrs["item_dtype"] = spec.item_dtype
            f.attrs["target_shape"] = np.asarray(spec.target_shape, dtype=np.int64)
            f.attrs["target_dtype"] = spec.target_dtype
            f.attrs["meta_json"] = json.dumps(spec.meta, default=str, sort_keys=True)
            f.attrs["requested_sha256"] = spec.requested_sha256
            f.attrs["chunk_size"] = int(chunk_size)
            f.attrs["created_at"] = time.time()
            f.create_dataset("requested_indices", data=spec.requested_indices)
            for name, (shape, dtype) in schema.row_dtypes(spec).items():
                schema.preallocated(f, name, (n, *shape), dtype)
            schema.preallocated(f, "chunks", (n,), CHUNK_DTYPE)
            f["chunks"][...] = np.zeros(n, dtype=CHUNK_DTYPE)
            schema.preallocated(f, "completion", (), np.dtype(f"S{schema.COMPLETION_BYTES}"))
            f["completion"][()] = b""
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @staticmethod
    def _read_spec(path: Path, file: h5py.File) -> CaptureSpec:
        """Rebuild the run's spec from the file, refusing anything that is not one of ours."""
        if file.attrs.get("magic") != schema.MAGIC:
            raise _fail(path, "is not an onnlab capture store (no capture-store magic)")
        version = int(file.attrs.get("schema_version", -1))
        if version != schema.SCHEMA_VERSION:
            raise _fail(path, f"has schema version {version}, expected {schema.SCHEMA_VERSION}")
        try:
            requested = file["requested_indices"][...]
            spec = CaptureSpec(
                requested_indices=requested,
                content=str(file.attrs["content"]),
                item_shape=tuple(file.attrs["item_shape"]),
                item_dtype=str(file.attrs["item_dtype"]),
                target_shape=tuple(file.attrs["target_shape"]),
                target_dtype=str(file.attrs["target_dtype"]),
                meta=json.loads(str(file.attrs["meta_json"])),
            )
            missing = [n for n in (*ROW_FIELDS, "chunks", "completion") if n not in file]
        except (KeyError, ValueError, OSError) as exc:
            raise _fail(path, f"has a damaged header ({exc})") from exc
        if missing:
            raise _fail(path, f"lacks dataset(s) {', '.join(missing)}")
        if spec.requested_sha256 != file.attrs.get("requested_sha256"):
            raise _fail(path, "requested index list does not match its recorded hash")
        return spec

    # ------------------------------------------------------------------ state
    def _recover(self) -> None:
        """Find the committed prefix: the longest chain of intact, contiguous chunk records."""
        records = self._file["chunks"][...]
        start = seq = 0
        while seq < records.size and schema.record_is_valid(records[seq], seq, start):
            start += int(records[seq]["count"])
            seq += 1
        if start > self.n_requested:
            raise _fail(self.path, "chunk records claim more rows than were requested")
        for later in range(seq + 1, records.size):
            rec = records[later]
            if int(rec["count"]) > 0 and schema.record_is_valid(rec, later, int(rec["start"])):
                raise _fail(
                    self.path,
                    f"chunk record {seq} is damaged but later chunks exist - the file is "
                    "corrupt; recapture into a new --out",
                )
        self.n_committed, self.n_chunks = start, seq
        indices = self._file["indices"][:start]
        if not np.array_equal(indices, self.spec.requested_indices[:start]):
            raise _fail(self.path, "stored indices do not follow the requested index list")

    def verify(self) -> None:
        """Recompute every committed chunk's sha256; raise `CaptureError` on the first mismatch."""
        records = self._file["chunks"][: self.n_chunks]
        for rec in records:
            start, count = int(rec["start"]), int(rec["count"])
            rows = {name: self._file[name][start : start + count] for name in ROW_FIELDS}
            if schema.rows_sha256(rows) != rec["sha256"].decode("ascii"):
                raise _fail(
                    self.path,
                    f"chunk {int(rec['seq'])} (rows {start}-{start + count - 1}) fails its "
                    "sha256 checksum - the file is corrupt; recapture into a new --out",
                )

    @property
    def n_requested(self) -> int:
        return int(self.spec.requested_indices.size)

    @property
    def meta(self) -> dict[str, Any]:
        return self.spec.meta

    @property
    def pending_indices(self) -> np.ndarray:
        """Requested indices not yet committed nor buffered, in capture order."""
        return self.spec.requested_indices[self.n_committed + len(self._pending) :]

    @property
    def is_full(self) -> bool:
        return self.n_committed == self.n_requested

    def last_exposure_s(self) -> float | None:
        """Exposure of the last committed frame: a resumed run keeps the run's exposure."""
        if self.n_committed == 0:
            return None
        value = float(self._file["exposure_s"][self.n_committed - 1])
        return value if np.isfinite(value) and value > 0 else None

    @property
    def completion(self) -> dict[str, Any] | None:
        """The completion record, or None while the run is unfinished (or it was torn)."""
        raw = bytes(self._file["completion"][()]).rstrip(b"\0")
        try:
            record = json.loads(raw) if raw else None
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    # ------------------------------------------------------------------ writing
    def append(
        self,
        data: np.ndarray,
        *,
        index: int,
        target: Any,
        frame_id: int = -1,
        timestamp_s: float = float("nan"),
        exposure_s: float = float("nan"),
        pattern_id: Any = "",
        attempts: int = 1,
    ) -> None:
        """Buffer one capture; it must be the next requested index. Commits full chunks."""
        if not self.writable:
            raise CaptureError(f"capture store {self.path} is open read-only")
        position = self.n_committed + len(self._pending)
        if position >= self.n_requested:
            raise CaptureError(f"capture store {self.path} already holds every requested index")
        expected = int(self.spec.requested_indices[position])
        if int(index) != expected:
            raise ValueError(f"index must be the next requested index {expected}, got {index}")
        shape, dtype = self._dtypes["data"]
        array = np.asarray(data)
        if array.shape != shape:
            raise ValueError(f"data must have shape {shape}, got {array.shape}")
        tshape, tdtype = self._dtypes["targets"]
        row = {
            "data": array.astype(dtype, copy=True),
            "indices": np.asarray(expected, dtype="<i8"),
            "targets": np.asarray(target, dtype=tdtype).reshape(tshape),
            "frame_id": np.asarray(frame_id, dtype="<i8"),
            "timestamp_s": np.asarray(timestamp_s, dtype="<f8"),
            "exposure_s": np.asarray(exposure_s, dtype="<f8"),
            "pattern_id": np.asarray(str(pattern_id).encode()[: schema.PATTERN_ID_BYTES]),
            "attempts": np.asarray(attempts, dtype="<i4"),
        }
        self._pending.append(row)
        if len(self._pending) >= self.chunk_size:
            self.commit()

    def commit(self) -> int:
        """Make the buffered rows durable (protocol in the module docstring); returns how many."""
        if not self._pending:
            return 0
        start, count = self.n_committed, len(self._pending)
        rows = {
            name: np.stack([r[name] for r in self._pending]).astype(self._dtypes[name][1])
            for name in ROW_FIELDS
        }
        for name in ROW_FIELDS:
            self._file[name][start : start + count] = rows[name]
        self._sync()
        record = schema.make_record(
            self.n_chunks, start, count, schema.rows_sha256(rows), time.time()
        )
        self._file["chunks"][self.n_chunks] = record[0]
        self._sync()
        self.n_committed += count
        self.n_chunks += 1
        self._pending.clear()
        return count

    def finalize(self, summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the completion record once every requested index is committed."""
        self.commit()
        if not self.is_full:
            raise CaptureError(
                f"capture store {self.path} holds {self.n_committed}/{self.n_requested} "
                "frames; cannot mark it complete"
            )
        digests = self._file["chunks"][: self.n_chunks]["sha256"]
        record = {
            "completed_at": time.time(),
            "n_frames": self.n_committed,
            "n_chunks": self.n_chunks,
            "store_sha256": schema.chain_sha256(digests),
            "summary": summary or {},
        }
        blob = json.dumps(record, default=str).encode()
        if len(blob) > schema.COMPLETION_BYTES:
            raise ValueError("summary is too large for the completion record")
        self._file["completion"][()] = blob
        self._sync()
        return record

    def _sync(self) -> None:
        self._file.flush()
        if self.durable:
            os.fsync(self._file.id.get_vfd_handle())

    # ------------------------------------------------------------------ reading
    def load(self) -> CaptureData:
        """All committed rows as arrays (buffered, uncommitted rows are not included)."""
        n = self.n_committed
        prov = {k: self._file[k][:n] for k in ("frame_id", "timestamp_s", "exposure_s", "attempts")}
        prov["pattern_id"] = np.array([p.decode() for p in self._file["pattern_id"][:n]])
        return CaptureData(
            data=self._file["data"][:n],
            indices=self._file["indices"][:n],
            targets=self._file["targets"][:n],
            provenance=prov,
            content=self.spec.content,
            meta=dict(self.spec.meta),
        )

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Commit what is buffered (if writable) and close; idempotent."""
        if not self._file.id.valid:
            return
        try:
            if self.writable:
                self.commit()
        finally:
            self._file.close()

    def __enter__(self) -> CaptureStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
