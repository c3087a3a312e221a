"""One training loop for every task, role and transfer method.

The loop knows nothing about distillation: it slices batches, calls the loss callable
(`loss(model, batch) -> (tensor, logs)`), steps the optimiser and keeps the books. A run
directory holds `config.json`, `state.pt` (model + optimiser + position, rewritten atomically
after every epoch), `metrics.json`, `curves.png` and, at the end, `model.pt`. Calling `train`
again on the same run directory resumes after the last finished epoch and produces the same
numbers as an uninterrupted run: batch order and augmentation come from per-epoch seeded
generators and the learning rate is a pure function of the step.

Under ``torchrun`` the same call trains one DistributedDataParallel replica per process
(``onnlab.training.distributed``): each rank takes its share of the same global batch, rank 0
alone writes the run directory and evaluates the validation set, and resume works as above.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onnlab.data.base import ArrayDataset
from onnlab.distill.teacher_outputs import ViewStream
from onnlab.errors import ConfigError, OnnlabError
from onnlab.runtime import CONFIG_FILE, RUN_FILE, seed_everything, to_jsonable, write_json
from onnlab.training import distributed
from onnlab.training.augment import augment_batch
from onnlab.training.checkpoint import atomic_torch_save, model_meta, save_checkpoint
from onnlab.training.config import RESUMABLE_CHANGES, TrainConfig, learning_rate
from onnlab.training.losses import LossFn
from onnlab.training.metrics import evaluate, primary_metric
from onnlab.training.report import plot_curves

STATE_FILE = "state.pt"


def _param_groups(
    model: nn.Module, params: Iterable[nn.Parameter] | None, config: TrainConfig
) -> list[dict[str, Any]]:
    """Explicit params → one group; otherwise frontend PSFs get `frontend_lr_scale`."""
    if params is not None:
        chosen = [p for p in params if p.requires_grad]
        if not chosen:
            raise ValueError("params holds no parameter that requires grad")
        return [{"params": chosen, "lr_scale": 1.0}]
    frontend = getattr(model, "frontend", None)
    front_ids = {id(p) for p in frontend.parameters()} if frontend is not None else set()
    front = [p for p in model.parameters() if p.requires_grad and id(p) in front_ids]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in front_ids]
    groups = [{"params": rest, "lr_scale": 1.0}] if rest else []
    if front:
        groups.append({"params": front, "lr_scale": config.frontend_lr_scale, "weight_decay": 0.0})
    if not groups:
        raise ValueError("the model has no parameter that requires grad")
    return groups


def _optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def _check_resumable(run_dir: Path, config: TrainConfig, meta: dict[str, Any] | None) -> None:
    """Refuse to continue a run with other settings: its epochs so far would not be the
    run's. TrainConfig fields (config.json) and the caller's `meta` (run.json: method, loss
    options, data, teacher) must match; folders from before run.json resume on config alone."""
    import json

    where = run_dir / CONFIG_FILE
    saved = json.loads(where.read_text())
    now = to_jsonable(config.model_dump())
    diff = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    run_file = run_dir / RUN_FILE
    if not diff and meta is not None and run_file.is_file():
        saved, now, where = json.loads(run_file.read_text()), to_jsonable(meta), run_file
        diff = sorted(k for k in {*saved, *now} if saved.get(k) != now.get(k))
    if diff:
        raise ConfigError(
            f"{where}: cannot resume with a different {', '.join(diff)} "
            f"(saved {[saved.get(k) for k in diff]}, now {[now.get(k) for k in diff]}); "
            "use a new run dir"
        )


def _make_batch(
    dataset: ArrayDataset,
    idx: torch.Tensor,
    config: TrainConfig,
    gen: torch.Generator,
    device,
    epoch: int = 0,
) -> dict[str, torch.Tensor]:
    x, y = dataset.images[idx], dataset.targets[idx]
    if dataset.teacher_images is None:
        x, y = augment_batch(config.augment, x, y, gen)
        batch = {"x": x.to(device), "y": y.to(device)}
        batch["x_teacher"] = batch["x"]
    else:  # captured features: the optics already happened, do not augment
        batch = {
            "x": x.to(device),
            "y": y.to(device),
            "x_teacher": dataset.teacher_images[idx].to(device),
        }
    batch["index"] = idx  # a frozen teacher's outputs may be cached per sample ...
    if config.augment != "none" and dataset.teacher_images is None:
        batch["view_epoch"] = torch.full_like(idx, epoch)  # ... or per view of this epoch
    return batch


def view_stream(config: TrainConfig, n_train: int, global_batch: int) -> ViewStream | None:
    """The augmented views this run draws (None: inputs are fixed, nothing to name).

    Epoch e's order and views come from ``Generator().manual_seed(seed * 1_000_003 + e)``
    (see `train`), so they are a function of exactly these fields: runs that share them share
    every view, and a frozen teacher's outputs on them (`onnlab.distill.teacher_outputs`).
    """
    if config.augment == "none":
        return None
    name = (
        f"views-v1 augment={config.augment} seed={config.seed} batch={global_batch} "
        f"n={n_train} generator=seed*1000003+epoch"
    )
    return ViewStream(name, (n_train // global_batch) * global_batch)


def _progress(enabled: bool):
    """Progress bar and epoch log on stderr, so stdout stays clean for `--json` output."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=True,
        console=Console(stderr=True, soft_wrap=True),  # piped logs: no 80-column wrapping
    )


def train(
    model: nn.Module,
    train_set: ArrayDataset,
    val_set: ArrayDataset | None,
    config: TrainConfig,
    loss: LossFn,
    run_dir: str | Path,
    *,
    params: Iterable[nn.Parameter] | None = None,
    meta: dict[str, Any] | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Train `model` in place and return the history (also in `run_dir/metrics.json`).

    Args:
        params: parameters to optimise (None: all with requires_grad; the frontend's get
            `config.frontend_lr_scale`). Backend-only fine-tuning passes the backend's.
        meta: what trains besides `config` (method, loss options, data, teacher): written to
            `run.json`, checked on resume, and added to the checkpoint metadata; `model.pt` is
            written when the model comes from the zoo or `meta` names task/role/architecture.
        label: which model this is ("teacher", "student seed 0 (ntkd)", "NTKD"...): starts
            every progress and epoch line, so a log says what is training.
    """
    run_dir = Path(run_dir)
    world = distributed.init_from_env()  # one process: rank 0 of 1
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    task = config.task or train_set.task or model_meta(model).get("task")
    if task is None:
        raise ValueError("config.task is None and the dataset does not name its task")
    config = config.model_copy(update={"task": task})
    if len(train_set) == 0:
        raise ValueError("train_set is empty")
    if config.keep_best and (val_set is None or len(val_set) == 0):
        raise ValueError("keep_best needs a validation set to choose the best epoch on")
    device = distributed.device_for(config.device)
    resume = distributed.broadcast((run_dir / STATE_FILE).is_file(), world)
    if resume:
        _check_resumable(run_dir, config, meta)
    distributed.barrier(world)  # every rank has read the old config.json before it is rewritten
    if world.is_main:
        write_json(run_dir / CONFIG_FILE, config.model_dump())
        if meta is not None:
            write_json(run_dir / RUN_FILE, meta)

    seed_everything(config.seed)
    model.to(device)
    if hasattr(model, "initialise"):  # data-dependent ActNorm init before any step
        g0 = torch.Generator().manual_seed(config.seed)
        first = torch.randperm(len(train_set), generator=g0)[: max(config.batch_size, 256)]
        model.initialise(train_set.images[first].to(device))
    groups = _param_groups(model, params, config)
    optimizer = _optimizer(groups, config)
    n = len(train_set)
    bs = min(config.batch_size, n)
    local_bs = distributed.local_batch_size(bs, world.size)  # this rank's share of a batch
    steps_per_epoch = n // bs  # drop the ragged last batch: BatchNorm needs > 1 sample
    total_steps = steps_per_epoch * config.epochs
    history: dict[str, Any] = {"task": task, "metric": primary_metric(task), "epochs": []}
    start_epoch = 0
    best: dict[str, Any] | None = None  # keep_best: epoch, score and weights of the best one
    if resume:
        state = torch.load(run_dir / STATE_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        start_epoch = int(state["epoch"])
        torch.set_rng_state(state["torch_rng"])
        best = state.get("best")

    prepare = getattr(loss, "prepare", None)
    if callable(prepare):  # e.g. NTKD anchor batches: exact teacher Grams computed once
        t_prep = time.perf_counter()
        step0 = start_epoch * steps_per_epoch  # per-step state resumes where it stopped
        prepare(
            train_set,
            device,
            config.seed,
            batch_size=local_bs,
            step=step0,
            view_stream=view_stream(config, n, bs),
        )
        history["prepare_time_s"] = time.perf_counter() - t_prep

    metric = history["metric"]
    name = label or task
    net = distributed.wrap(model, device, world)  # DDP averages gradients across ranks
    with _progress(config.progress and world.is_main) as bar:
        if resume and world.is_main:
            bar.console.print(
                f"{name}: resuming after epoch {start_epoch}/{config.epochs} "
                f"from {run_dir / STATE_FILE}"
            )
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            model.train()
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen)  # the same global order on every rank
            sums: dict[str, float] = defaultdict(float)
            job = bar.add_task(
                f"{name} epoch {epoch + 1}/{config.epochs}", total=steps_per_epoch, info=""
            )
            for i in range(steps_per_epoch):
                step = epoch * steps_per_epoch + i
                lr = learning_rate(config, step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                idx = order[i * bs : (i + 1) * bs]
                batch = _make_rank_batch(train_set, idx, config, gen, device, world, epoch)
                value, logs = loss(net, batch)
                if not _finite(value, world):
                    raise OnnlabError(
                        f"loss became {value.item()} at epoch {epoch + 1} step {i + 1} "
                        f"(lr {lr:.3g}); lower --lr or check the data"
                    )
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(
                        [p for g in groups for p in g["params"]], config.grad_clip
                    )
                optimizer.step()
                for key, v in logs.items():
                    sums[key] += float(v)
                bar.update(job, advance=1, info=f"loss {sums['loss'] / (i + 1):.4f}")
            bar.remove_task(job)
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": lr if steps_per_epoch else config.lr,
                "train": distributed.mean_over_ranks(
                    {k: v / max(steps_per_epoch, 1) for k, v in sums.items()}, world
                ),
                "time_s": time.perf_counter() - t0,
            }
            if val_set is not None and len(val_set):  # rank 0 evaluates the whole set
                val = (
                    evaluate(model, val_set, task, config.eval_batch_size)
                    if world.is_main
                    else None
                )
                record["val"] = distributed.broadcast(val, world)
                if config.keep_best and (best is None or record["val"][metric] > best["score"]):
                    best = {"epoch": epoch + 1, "score": record["val"][metric]}
                    best["model"] = {
                        k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                    }
            history["epochs"].append(record)
            if world.is_main:
                _save_state(run_dir, model, optimizer, history, epoch + 1, best)
                _log_epoch(bar, record, metric, config.epochs, name)

    history["final"] = history["epochs"][-1] if history["epochs"] else {}
    if best is not None:  # small captured sets overfit: end on the best validated epoch
        model.load_state_dict(best["model"])
        history["best_epoch"] = best["epoch"]
        history["final"] = history["epochs"][best["epoch"] - 1]
    history["train_time_s"] = sum(r["time_s"] for r in history["epochs"])
    if world.distributed:
        history["world_size"] = world.size
    if not world.is_main:
        distributed.barrier(world)  # return once rank 0 has written model.pt and metrics.json
        return history
    write_json(run_dir / "metrics.json", history)
    if history["epochs"] and "val" in history["epochs"][0]:
        plot_curves(
            history,
            run_dir / "curves.png",
            title=f"{task}: {type(loss).__name__}, seed {config.seed}, "
            f"n_train {len(train_set)} ({run_dir.name})",
        )
    if model_meta(model) or meta:
        final_val = history["final"].get("val", {})
        save_checkpoint(
            run_dir / "model.pt", model, {**(meta or {}), "metrics": {"val": final_val}}
        )
    distributed.barrier(world)
    return history


def _make_rank_batch(
    dataset: ArrayDataset,
    global_idx: torch.Tensor,
    config: TrainConfig,
    gen: torch.Generator,
    device,
    world: distributed.World,
    epoch: int = 0,
) -> dict[str, torch.Tensor]:
    """This rank's share of the global batch ``global_idx`` (the whole batch in one process).

    With augmentation, every rank augments the whole global batch with the epoch's generator
    and keeps its own rows: the draws are then exactly those of a single process (cheap next
    to a training step for onnlab's in-memory images), so DDP reproduces the single-process
    run for models without BatchNorm.  Without augmentation a rank builds only its rows.
    """
    if not world.distributed:
        return _make_batch(dataset, global_idx, config, gen, device, epoch)
    if config.augment == "none" or dataset.teacher_images is not None:
        return _make_batch(
            dataset, distributed.shard(global_idx, world), config, gen, device, epoch
        )
    whole = _make_batch(dataset, global_idx, config, gen, device, epoch)
    return {key: value[world.rank :: world.size] for key, value in whole.items()}


def _finite(value: torch.Tensor, world: distributed.World) -> bool:
    """Is the loss finite on every rank? (All ranks agree, so all stop together.)"""
    finite = bool(torch.isfinite(value.detach()).all())
    if world.distributed:
        finite = distributed.mean_over_ranks({"finite": float(finite)}, world)["finite"] == 1.0
    return finite


def _save_state(
    run_dir: Path,
    model: nn.Module,
    optimizer,
    history: dict,
    epoch: int,
    best: dict[str, Any] | None = None,
) -> None:
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "best": best,
        "optimizer": optimizer.state_dict(),
        "history": history,
        "epoch": epoch,
        "torch_rng": torch.get_rng_state(),
    }
    atomic_torch_save(state, run_dir / STATE_FILE)
    write_json(run_dir / "metrics.json", history)


def _log_epoch(bar, record: dict[str, Any], metric: str, epochs: int, name: str = "") -> None:
    val = record.get("val", {})
    text = f"{name}: " if name else ""
    text += f"epoch {record['epoch']}/{epochs}  loss {record['train'].get('loss', math.nan):.4f}"
    if val:
        text += f"  val {metric} {val[metric]:.4f}  val loss {val['loss']:.4f}"
    bar.console.print(text + f"  ({record['time_s']:.1f} s)")
