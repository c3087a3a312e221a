"""CaptureStore: exactly-once rows across crashes, corruption and foreign-file refusal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from onnlab.capture.schema import CaptureSpec
from onnlab.capture.store import CaptureStore
from onnlab.errors import CaptureError

sys.path.insert(0, str(Path(__file__).parent))
import crash_writer as cw  # noqa: E402

WRITER = Path(__file__).parent / "crash_writer.py"


def _run_writer(path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_exactly_once(path: Path, n: int, seed: int = 0) -> None:
    """Every requested index once, in order, rows identical to a clean run's."""
    with CaptureStore.read(path) as store:
        assert store.is_full
        got = store.load()
    want = cw.requested(n, seed)
    np.testing.assert_array_equal(got.indices, want)
    assert len(np.unique(got.indices)) == n
    for k, index in enumerate(want):
        np.testing.assert_array_equal(got.data[k], cw.row(seed, index))
    np.testing.assert_array_equal(got.targets, want % 10)
    np.testing.assert_array_equal(got.provenance["frame_id"], want + 1000)
    assert list(got.provenance["pattern_id"]) == [str(i) for i in want]


def test_roundtrip_resume_and_completion(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    spec = cw.spec(23, 0)
    with CaptureStore.open(path, spec, chunk_size=5) as store:
        for index in store.pending_indices[:12]:
            cw.append_one(store, 0, index)
    # 12 rows: two full chunks committed on the way, two more committed by __exit__
    with CaptureStore.open(path, spec, chunk_size=5) as store:
        assert store.resumed_from == 12 and store.n_chunks == 3
        assert store.completion is None
        with pytest.raises(ValueError, match="next requested index"):
            store.append(cw.row(0, 0), index=int(store.pending_indices[1]), target=0)
        cw.fill(store, 0)
        record = store.finalize({"captured": 11})
    assert record["n_frames"] == 23
    with CaptureStore.read(path) as store:
        assert store.completion["summary"] == {"captured": 11}
    _assert_exactly_once(path, 23)


def test_interrupt_at_random_points_then_resume(tmp_path: Path) -> None:
    """Ctrl-C (KeyboardInterrupt) anywhere, repeatedly: nothing committed is lost."""
    path = tmp_path / "run.h5"
    rng = np.random.default_rng(1)
    n, spec = 60, cw.spec(60, 0)
    for _ in range(20):
        stop_after = int(rng.integers(0, 9))
        with pytest.raises(KeyboardInterrupt), CaptureStore.open(path, spec, chunk_size=4) as s:
            before = s.n_committed
            for k, index in enumerate(s.pending_indices):
                if k == stop_after:
                    raise KeyboardInterrupt
                cw.append_one(s, 0, index)
            raise KeyboardInterrupt
        with CaptureStore.read(path) as s:
            assert s.n_committed == min(n, before + stop_after)
    with CaptureStore.open(path, spec, chunk_size=4) as s:
        cw.fill(s, 0)
    _assert_exactly_once(path, n)


@pytest.mark.parametrize("syncs", [1, 2, 3, 6])
def test_process_death_inside_commit(tmp_path: Path, syncs: int) -> None:
    """os._exit between a chunk's rows and its record (odd) or after the record (even)."""
    path = tmp_path / "run.h5"
    proc = _run_writer(path, "--n", "30", "--chunk", "4", "--crash-after-syncs", str(syncs))
    proc.communicate(timeout=60)
    assert proc.returncode == 9
    with CaptureStore.read(path) as s:
        assert s.n_committed == 4 * (syncs // 2)  # a chunk counts only once its record is down
    proc = _run_writer(path, "--n", "30", "--chunk", "4")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    _assert_exactly_once(path, 30)


def test_kill_9_at_random_times_then_resume(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    rng = np.random.default_rng(7)
    args = ("--n", "120", "--chunk", "3", "--sleep", "0.004")
    kills = 0
    for _ in range(4):
        proc = _run_writer(path, *args)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.02, 0.25)))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        kills += proc.returncode == -signal.SIGKILL
        with CaptureStore.read(path) as s:  # readable and verified after every kill
            committed = s.n_committed
        assert 0 <= committed <= 120
    assert kills >= 1
    proc = _run_writer(path, *args)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    _assert_exactly_once(path, 120)


def _complete_store(path: Path, n: int = 16, chunk: int = 4) -> None:
    with CaptureStore.open(path, cw.spec(n, 0), chunk_size=chunk) as store:
        cw.fill(store, 0)


def test_corrupt_chunk_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    _complete_store(path)
    with h5py.File(path, "r") as f:
        offset = f["data"].id.get_offset() + f["data"][0].nbytes * 5 + 3  # inside chunk 1
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(CaptureError, match=r"chunk 1 \(rows 4-7\) fails its sha256"):
        CaptureStore.read(path)
    with pytest.raises(CaptureError, match="corrupt"):
        CaptureStore.read(path, verify=False).verify()


def test_damaged_record_in_the_middle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    _complete_store(path)
    with h5py.File(path, "r+") as f:
        rec = f["chunks"][1]
        rec["count"] = 5  # crc no longer matches, later records still valid
        f["chunks"][1] = rec
    with pytest.raises(CaptureError, match="record 1 is damaged"):
        CaptureStore.read(path)


def test_foreign_and_mismatched_files_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(CaptureError, match="not a readable HDF5"):
        CaptureStore.read(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(CaptureError, match="not an onnlab capture store"):
        CaptureStore.open(other, cw.spec(5, 0))
    path = tmp_path / "run.h5"
    _complete_store(path, n=8)
    with pytest.raises(CaptureError, match="different capture run.*requested_sha256"):
        CaptureStore.open(path, cw.spec(8, seed=1))
    changed = cw.spec(8, 0)
    changed.meta["split"] = "test"
    with pytest.raises(CaptureError, match="split"):
        CaptureStore.open(path, changed)
    with pytest.raises(ValueError, match="duplicates"):
        CaptureSpec(np.array([1, 1]), "frames", (4, 4), "uint16")


# ---------------------------------------------------------------- issue 16: damaged files


def _flip_byte_in_chunk1(path: Path) -> None:
    with h5py.File(path, "r") as f:
        offset = f["data"].id.get_offset() + f["data"][0].nbytes * 5 + 3  # inside chunk 1
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x40]))


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("complete", [False, True], ids=["partial-run", "complete-run"])
def test_resume_refuses_a_damaged_committed_chunk_and_leaves_the_file_untouched(
    tmp_path: Path, complete: bool
) -> None:
    """Flipped pixel bytes used to be accepted: the capture went on and was marked complete."""
    path = tmp_path / "run.h5"
    spec = cw.spec(16, 0)
    with CaptureStore.open(path, spec, chunk_size=4) as store:
        for index in store.pending_indices[: 16 if complete else 10]:
            cw.append_one(store, 0, index)
    _flip_byte_in_chunk1(path)
    before = _sha(path)
    with pytest.raises(CaptureError, match=r"chunk 1 \(rows 4-7\) fails its sha256") as info:
        CaptureStore.open(path, spec, chunk_size=4)
    assert "\n" not in str(info.value)
    assert _sha(path) == before  # refused before anything was written


def _truncate(path: Path, keep: float) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(int(size * keep))


@pytest.mark.parametrize("opener", ["read", "open"])
def test_truncated_store_is_reported_as_truncated_not_locked(tmp_path: Path, opener) -> None:
    """HDF5's truncation message mentions 'sblock', which the old check read as 'lock'."""
    path = tmp_path / "run.h5"
    _complete_store(path)
    _truncate(path, 0.5)
    with pytest.raises(CaptureError) as info:
        if opener == "read":
            CaptureStore.read(path)
        else:
            CaptureStore.open(path, cw.spec(16, 0))
    msg = str(info.value)
    assert "is truncated" in msg and "another process" not in msg
    assert "bytes present" in msg


def test_store_held_by_a_running_capture_is_reported_as_locked(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    _complete_store(path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import h5py, sys, time; f = h5py.File(sys.argv[1], 'r+'); print('ready', flush=True);"
            " time.sleep(30)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(CaptureError, match="open in another process"):
            CaptureStore.open(path, cw.spec(16, 0))
    finally:
        holder.kill()
        holder.communicate(timeout=30)


def test_corrupt_hdf5_metadata_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    _complete_store(path)
    with open(path, "r+b") as fh:  # keep the signature, destroy the superblock behind it
        fh.seek(8)
        fh.write(b"\xff" * 48)
    with pytest.raises(CaptureError) as info:
        CaptureStore.read(path)
    msg = str(info.value)
    assert "is corrupt" in msg and "another process" not in msg and "truncated" not in msg
