"""Benchmark: predicted (kernel regression) vs trained accuracy of random-PSF networks.

For each kernel count K: draw K PSFs from the law of `OpticalFrontend`'s initialisation, predict
the test accuracy of "K random PSFs + one FC layer" by kernel regression with its NTK, then
train that very network (same PSFs, same n training images, MSE, full-batch GD keeping the best
checkpoint on the same validation split) and compare. The K → infinity prediction is reported
beside them.

Times are single-threaded (the benchmark machine is shared; one thread avoids oversubscription
that otherwise dominates timings), both wall and CPU. Each estimate time is that of a stand-alone
estimate (patch statistics included when that route uses them). `speedup_vs_training` divides
the training time of the network as onnlab trains a hybrid ONN (optics simulated in every step,
"in_loop"; priced on one validation period of 5 steps + 1 validation pass, the cached run's
cadence, times the periods the cached run needed) by the estimate time;
`speedup_vs_cached_training` uses the cheapest honest training (optical features computed once).
Both use CPU seconds.

Command line (the full validation): ``python -m onnlab.bench.estimate --task mnist
--data-root /work/shared/data --n-train 2000 --n-test 10000 --kernels 8,64,500,1000`` and
``--task cifar10 --n-train 1000 --n-val 2000 --n-test 10000 --kernels 8,64,500``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from onnlab.estimate.design import TASK_DEFAULTS
from onnlab.estimate.estimator import Architecture, Estimator, Split
from onnlab.estimate.reference import train_reference

PAPER_TABLE5 = {
    "mnist": {8: 96.12, 500: 96.81, 1000: 97.24, "inf": 97.72},
    "cifar10": {8: 36.73, 500: 49.32, 1000: 56.23, "inf": 67.33},
}


def _split(task: str, split: str, data_root: str | None, limit: int, seed: int) -> Split:
    from onnlab.data import load_dataset

    ds = load_dataset(task, split, data_root, seed=seed, limit=limit)
    return Split(ds.images, ds.targets)


def _worst(rows: list[dict], key: str, pick) -> float | None:
    values = [r[key] for r in rows if key in r]
    return pick(values) if values else None


def _trained(task, arch, psfs, splits, seed: int) -> dict:
    """Train the network (cached features) and price the same run with the optics in the loop.

    The in-loop price is measured on one validation period (5 full-batch steps + 1 validation
    pass, exactly the cadence of the cached run) and multiplied by the periods the cached run
    needed — measuring single steps with a validation pass after each would overcharge it.
    """
    train, val, test = splits
    ref = train_reference(task, arch, psfs, train, val, test, seed=seed)
    period = 5
    loop = train_reference(
        *(task, arch, psfs, train, val, test),
        seed=seed,
        features="in_loop",
        max_steps=period,
        eval_every=period,
    )
    per_period = (loop.cpu_s - loop.setup_cpu_s - loop.final_eval_cpu_s) / max(
        loop.steps_run / period, 1
    )
    return {
        "trained": 100 * ref.score,
        "trained_val": 100 * ref.val_score,
        "train_cached_wall_s": ref.time_s,
        "train_cached_cpu_s": ref.cpu_s,
        "train_in_loop_cpu_s": loop.setup_cpu_s
        + per_period * ref.steps_run / period
        + loop.final_eval_cpu_s,
        "train_steps": ref.steps_run,
        "best_step": ref.best_step,
    }


def validate(
    task: str = "mnist",
    *,
    data_root: str | None = None,
    n_train: int = 1000,
    n_val: int = 500,
    n_test: int = 1000,
    kernels: tuple[int, ...] = (8, 64),
    seed: int = 0,
    ce: bool = False,
    sgd: bool = False,
    pool: int | None = None,
    train_nets: bool = True,
    log=None,
) -> dict:
    """Predicted vs trained accuracy for each K, and the K → infinity prediction.

    Progress goes to `log` (default: stderr, so that `onnlab bench estimate --json` prints
    only JSON on stdout).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    d = TASK_DEFAULTS[task]
    if d["kind"] != "classification":
        raise ValueError(f"task must be a classification task, got {task!r}")
    arch = Architecture(
        "classification",
        d["in_channels"],
        d["image_hw"],
        d["n_outputs"],
        d["kernel_px"],
        pool=d["pool"] if pool is None else pool,
    )
    train = _split(task, "train", data_root, n_train, seed)
    val = _split(task, "val", data_root, n_val, seed)
    test = _split(task, "test", data_root, n_test, seed)
    est = Estimator(arch, train, val, test, seed=seed)
    inf = est.predict_infinite()
    log(
        f"[estimate] {task} n={n_train}: K=inf predicted {100 * inf.score:.2f}% "
        f"({inf.cpu_s:.1f} s CPU)"
    )
    rows = []
    for k in kernels:
        gen = torch.Generator().manual_seed(seed * 100_003 + k)
        psfs = est.prior.sample(k, arch.in_channels, arch.kernel_px, gen)
        pred = est.predict_psfs(psfs)
        pred_cpu = pred.cpu_s
        row = {
            "n_kernels": k,
            "predicted": 100 * pred.score,
            "predicted_val": 100 * pred.val_score,
            "lambda_rel": pred.lambda_rel,
            "solver": pred.details.get("solver"),
            "estimate_wall_s": pred.time_s,
            "estimate_cpu_s": pred_cpu,
        }
        if train_nets:
            row.update(_trained(task, arch, psfs, (train, val, test), seed))
            row["abs_error_points"] = abs(row["predicted"] - row["trained"])
            row["speedup_vs_training"] = row["train_in_loop_cpu_s"] / max(pred_cpu, 1e-9)
            row["speedup_vs_cached_training"] = row["train_cached_cpu_s"] / max(pred_cpu, 1e-9)
            minibatch = {"batch_size": 128, "patience": 100 * -(-len(train.images) // 128)}
            if ce:
                ref_ce = train_reference(
                    *(task, arch, psfs, train, val, test),
                    seed=seed,
                    loss="ce",
                    optimizer="adam",
                    lr=1e-3,
                    **minibatch,
                )
                row["trained_ce_adam"] = 100 * ref_ce.score
            if sgd:
                ref_sgd = train_reference(
                    task, arch, psfs, train, val, test, seed=seed, **minibatch
                )
                row["trained_mse_minibatch_sgd"] = 100 * ref_sgd.score
            log(
                f"[estimate] K={k}: predicted {row['predicted']:.2f}% trained "
                f"{row['trained']:.2f}% | estimate {pred_cpu:.2f} s, training "
                f"{row['train_cached_cpu_s']:.2f} s cached / {row['train_in_loop_cpu_s']:.1f} s "
                "in-loop (CPU)"
            )
        else:
            log(f"[estimate] K={k}: predicted {row['predicted']:.2f}% ({pred_cpu:.2f} s)")
        rows.append(row)
    return {
        "task": task,
        "n_train": len(train.images),
        "n_val": len(val.images),
        "n_test": len(test.images),
        "architecture": {
            "kernel_px": arch.kernel_px,
            "pool": arch.pool,
            "readout": "one FC layer",
            "psfs": "random, frozen",
            "normalise": arch.normalise,
        },
        "predicted_infinite": 100 * inf.score,
        "infinite_estimate_cpu_s": inf.cpu_s,
        "per_k": rows,
        "max_abs_error_points": _worst(rows, "abs_error_points", max),
        "speedup_vs_training": _worst(rows, "speedup_vs_training", min),
        "speedup_vs_cached_training": _worst(rows, "speedup_vs_cached_training", min),
        "paper_table5": PAPER_TABLE5.get(task, {}),
        "timing": "CPU seconds, torch single-threaded",
    }


def run(quick: bool = False, seed: int = 0) -> dict:
    """Small configuration on the bundled MNIST sample (quick: tiny)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if quick:
            return validate(n_train=200, n_val=100, n_test=200, kernels=(8,), seed=seed)
        return validate(n_train=1000, n_val=500, n_test=1000, kernels=(4, 16, 64), seed=seed)
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> None:
    """Full validation from the command line; prints the JSON result last."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mnist", choices=["mnist", "cifar10"])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--kernels", default="8,64,500")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=int, default=None, help="sensor binning (task default)")
    ap.add_argument("--predict-only", action="store_true", help="skip the trained references")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ce", action="store_true", help="also train with cross-entropy (Adam)")
    ap.add_argument("--sgd", action="store_true", help="also train MSE with minibatch SGD")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = validate(
        args.task,
        data_root=args.data_root,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        kernels=tuple(int(k) for k in args.kernels.split(",")),
        seed=args.seed,
        ce=args.ce,
        sgd=args.sgd,
        pool=args.pool,
        train_nets=not args.predict_only,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
