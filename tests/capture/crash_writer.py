"""Subprocess helper for the crash tests: writes a deterministic capture store, then dies.

Run as a script (not collected by pytest). Each row is a pure function of (seed, index), so a
resumed run must reproduce byte-identical rows. `--crash-after-syncs K` ends the process with
`os._exit` right after the K-th flush, i.e. between a chunk's rows and its record (odd K) or
right after a record (even K): the worst moments of the commit protocol, without cleanup.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from onnlab.capture.schema import CaptureSpec
from onnlab.capture.store import CaptureStore

SHAPE = (2, 6, 5)


def requested(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(10 * n)[:n]


def row(seed: int, index: int) -> np.ndarray:
    return np.random.default_rng([seed, int(index)]).random(SHAPE, dtype=np.float32)


def spec(n: int, seed: int) -> CaptureSpec:
    return CaptureSpec(
        requested_indices=requested(n, seed),
        content="features",
        item_shape=SHAPE,
        item_dtype="float32",
        meta={"dataset": "synthetic", "split": "train", "seed": seed},
    )


def append_one(store: CaptureStore, seed: int, index: int) -> None:
    store.append(
        row(seed, index),
        index=int(index),
        target=int(index) % 10,
        frame_id=int(index) + 1000,
        timestamp_s=float(index),
        exposure_s=0.01,
        pattern_id=int(index),
    )


def fill(store: CaptureStore, seed: int, sleep_s: float = 0.0) -> None:
    for index in store.pending_indices:
        append_one(store, seed, index)
        if sleep_s:
            time.sleep(sleep_s)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--crash-after-syncs", type=int, default=0)
    args = parser.parse_args()
    store = CaptureStore.open(args.path, spec(args.n, args.seed), chunk_size=args.chunk)
    if args.crash_after_syncs:
        calls = {"n": 0}
        original = store._sync

        def dying_sync() -> None:
            original()
            calls["n"] += 1
            if calls["n"] >= args.crash_after_syncs:
                os._exit(9)

        store._sync = dying_sync  # type: ignore[method-assign]
    print("ready", flush=True)
    fill(store, args.seed, args.sleep)
    store.finalize({"done": True})
    store.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
