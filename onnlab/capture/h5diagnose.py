"""Why HDF5 could not open a file, in one line: locked, truncated, foreign or corrupt.

HDF5 reports all of these as one ``OSError`` whose text is the only clue. Looking for "lock"
in it is wrong ("sblock->base_addr" in HDF5's truncation message contains it), so each case is
matched on HDF5's specific wording, and "is it HDF5 at all" is answered from the file's own
signature bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def has_hdf5_signature(path: Path) -> bool:
    """HDF5's signature sits at byte 0 or after a user block of 512 * 2**k bytes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            offset = 0
            while offset + 8 <= size:
                fh.seek(offset)
                if fh.read(8) == _HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False
    return False


def why_unopenable(path: Path, exc: OSError) -> str:
    """Tell locking, truncation, a foreign file and corruption apart (one line each)."""
    text = " ".join(str(exc).split())
    if "unable to lock file" in text:  # HDF5's flock failed: another writer holds it
        return "is open in another process (a capture still running?)"
    truncated = re.search(r"truncated file: eof = (\d+).*?stored_eof = (\d+)", text)
    if truncated:
        have, want = int(truncated.group(1)), int(truncated.group(2))
        return (
            f"is truncated: {have} of {want} bytes present (an interrupted copy or a full "
            "disk?) - restore the whole file or recapture into a new --out"
        )
    if not has_hdf5_signature(path):
        return "is not a readable HDF5 file (no HDF5 signature)"
    reason = re.sub(r"^.*?\((.*)\)$", r"\1", text)
    return f"is corrupt (HDF5 cannot open it: {reason}) - recapture into a new --out"
