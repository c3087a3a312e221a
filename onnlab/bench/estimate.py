"""Benchmark: predicted vs trained accuracy, and the estimate's speed-up over training.

Default (``against=trained``, `onnlab.bench.estimate_trained`): the learning-curve estimate
against the students `onnlab train` produces (trainable PSFs, the task's backend, the full
training set), from the committed table ``configs/estimate/trained-hybrids.json``.

``against=random`` (the paper's Table 5 protocol): for each kernel count K, draw K PSFs from
the law of `OpticalFrontend`'s initialisation, predict the test accuracy of "K random PSFs +
one FC layer" by kernel regression with its NTK, then train that very network (same PSFs, same
n training images, MSE, full-batch GD keeping the best checkpoint on the same validation split)
and compare. The K → infinity prediction is reported beside them.

Times are single-threaded (the benchmark machine is shared; one thread avoids oversubscription
that otherwise dominates timings), both wall and CPU. Each estimate time is that of a stand-alone
estimate (patch statistics included when that route uses them). `speedup_vs_training` divides
the training time of the network as onnlab trains a hybrid ONN (optics simulated in every step,
"in_loop"; priced on one validation period of 5 steps + 1 validation pass, the cached run's
cadence, times the periods the cached run needed) by the estimate time;
`speedup_vs_cached_training` uses the cheapest honest training (optical features computed once).
Both use CPU seconds.

Command line (the full Table 5 validation), two spellings of one tool (same options, same
``run``): ``onnlab bench estimate --opt against=random --opt task=mnist --opt
data_root=/work/shared/data --opt n_train=2000 --opt n_test=10000 --opt
kernels=8,64,500,1000`` or ``python -m onnlab.bench.estimate --against random --task mnist
--data-root /work/shared/data --n-train 2000 --n-test 10000 --kernels 8,64,500,1000``
(without options the module runs the full-run sizes of ``OPTIONS``, ``onnlab bench estimate``
the smaller default run).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from onnlab.bench.estimate_trained import load_split, validate_trained
from onnlab.estimate.design import TASK_DEFAULTS
from onnlab.estimate.estimator import Architecture, Estimator
from onnlab.estimate.reference import train_reference

PAPER_TABLE5 = {
    "mnist": {8: 96.12, 500: 96.81, 1000: 97.24, "inf": 97.72},
    "cifar10": {8: 36.73, 500: 49.32, 1000: 56.23, "inf": 67.33},
}


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
    train = load_split(task, "train", data_root, n_train, seed)
    val = load_split(task, "val", data_root, n_val, seed)
    test = load_split(task, "test", data_root, n_test, seed)
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


# The options of a validation run, shared by ``onnlab bench estimate --opt KEY=VALUE`` and this
# module's command line (``python -m onnlab.bench.estimate --KEY VALUE``), so both are one tool:
# name -> (type, default of a full run, help).
OPTIONS: dict[str, tuple[type, Any, str]] = {
    "task": (str, "mnist", "classification task: mnist | cifar10"),
    "against": (
        str,
        "trained",
        "trained: the learning-curve estimate vs the trained students of "
        "configs/estimate/trained-hybrids.json; random: random PSFs + one FC layer vs that "
        "network trained (Table 5)",
    ),
    "data_root": (str, None, "dataset folder (default: $ONNLAB_DATA, else the bundled sample)"),
    "n_train": (int, 2000, "training images"),
    "estimate_seeds": (int, 1, "against=trained: estimates (seeds 0..N-1) averaged per K"),
    "n_val": (int, 1000, "validation images (ridge and early-stopping choice)"),
    "n_test": (int, 2000, "test images"),
    "kernels": (str, "8,64,500", "comma-separated kernel counts K"),
    "pool": (int, None, "sensor binning (default: the task's)"),
    "predict_only": (bool, False, "skip the trained references"),
    "threads": (int, 1, "torch CPU threads"),
    "ce": (bool, False, "also train with cross-entropy (Adam)"),
    "sgd": (bool, False, "also train MSE with minibatch SGD"),
}
CHOICES = {"against": ("trained", "random"), "task": ("mnist", "cifar10")}
QUICK = {"n_train": 200, "n_val": 100, "n_test": 200, "kernels": "8"}
DEFAULT_RUN = {"n_train": 1000, "n_val": 500, "n_test": 1000, "kernels": "4,16,64"}


# against=trained: the learning curve's sizes per task (onnlab.estimate.learning_curve)
def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["task=cifar10", "n_train=1000"]`` -> typed options (ValueError names a bad key/value)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in OPTIONS:
            raise ValueError(
                f"estimate option must be KEY=VALUE with KEY in {sorted(OPTIONS)}: {pair!r}"
            )
        kind = OPTIONS[key][0]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                out[key] = text.lower() in ("true", "1", "yes")
            else:
                out[key] = kind(text)
            if key in CHOICES and out[key] not in CHOICES[key]:
                raise ValueError(text)
        except ValueError:
            expected = " | ".join(CHOICES[key]) if key in CHOICES else kind.__name__
            raise ValueError(f"estimate option {key}: expected {expected}, got {text!r}") from None
    return out


def run(quick: bool = False, seed: int = 0, **options: Any) -> dict:
    """Validation on the bundled MNIST sample by default (quick: tiny); ``options`` (see
    ``OPTIONS``) override any setting, which is how a full validation runs from either entry
    point. Default: against the trained students (``against=trained``); ``against=random``
    is the Table 5 validation (random PSFs + one FC layer vs that network trained)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown estimate option(s) {unknown}; known: {sorted(OPTIONS)}")
    settings = {k: v[1] for k, v in OPTIONS.items()} | (QUICK if quick else DEFAULT_RUN) | options
    if settings["against"] not in ("random", "trained"):
        raise ValueError(f"against must be 'trained' or 'random', got {settings['against']!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(settings["threads"])
    try:
        if settings["against"] == "trained":
            names = ("n_train", "n_val", "n_test")  # unset: the task's learning-curve sizes
            sizes = {k: QUICK[k] for k in names} if quick else {}
            sizes |= {k: v for k, v in options.items() if k in names}
            seeds = tuple(range(seed, seed + settings["estimate_seeds"]))
            return validate_trained(
                settings["task"], data_root=settings["data_root"], seeds=seeds, **sizes
            )
        return validate(
            settings["task"],
            data_root=settings["data_root"],
            n_train=settings["n_train"],
            n_val=settings["n_val"],
            n_test=settings["n_test"],
            kernels=tuple(int(k) for k in str(settings["kernels"]).split(",")),
            seed=seed,
            ce=settings["ce"],
            sgd=settings["sgd"],
            pool=settings["pool"],
            train_nets=not settings["predict_only"],
        )
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> None:
    """The same run as ``onnlab bench estimate``, with each option as a flag; prints the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    for name, (kind, default, text) in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            ap.add_argument(flag, action="store_true", help=text)
        else:
            ap.add_argument(flag, type=kind, default=None, help=f"{text} (full run: {default})")
    args = vars(ap.parse_args(argv))
    seed, quick = args.pop("seed"), args.pop("quick")
    given = {k: v for k, v in args.items() if v is not None and v is not False}
    full = ("n_train", "n_val", "n_test", "kernels")
    table5 = given.get("against", OPTIONS["against"][1]) == "random"
    base = {k: OPTIONS[k][1] for k in full} if table5 and not quick else {}
    print(json.dumps(run(quick=quick, seed=seed, **(base | given)), indent=2))


if __name__ == "__main__":
    main()
