"""DDP training with 2 CPU (gloo) processes: one run folder, resume, same numbers as 1 process.

The MNIST student has no BatchNorm, so with the global batch split across ranks and the
augmentation drawn as one process draws it (onnlab.training.distributed), 2-rank DDP must
reproduce the single-process weights up to float reduction order — including after an
interruption and a resume.  This file is also the worker torchrun runs
(`... test_ddp_train.py OUT`).
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import pytest
import torch

from onnlab.data import load_dataset
from onnlab.errors import ConfigError
from onnlab.training import TrainConfig, make_loss, train
from onnlab.training.checkpoint import read_checkpoint
from onnlab.training.loop import STATE_FILE

sys.path.insert(0, str(Path(__file__).parent))
from test_ddp_ntkd import WORLD, run_two_ranks  # noqa: E402

STOP_AT_STEP = 6  # of 2 epochs x 4 steps: epoch 1 is saved, epoch 2 is cut short


class _Stop(Exception):
    """Stands for a crash or Ctrl-C in the middle of epoch 2."""


class _StopOnce:
    def __init__(self, loss) -> None:
        self.loss, self.calls = loss, 0

    def __call__(self, model, batch):
        self.calls += 1
        if self.calls == STOP_AT_STEP:
            raise _Stop
        return self.loss(model, batch)


def _setup():
    from onnlab.models.zoo import build_student

    train_set = load_dataset("mnist", "train", None, limit=256)
    val_set = load_dataset("mnist", "val", None, limit=64)
    config = TrainConfig(
        task="mnist", epochs=2, batch_size=64, lr=3e-3, frontend_lr_scale=10.0,
        augment="shift", progress=False, device="cpu",
    )  # fmt: skip
    torch.manual_seed(0)
    return build_student("mnist"), train_set, val_set, config


def _worker(out: Path) -> None:
    """Train 2 epochs, interrupted in epoch 2, then resumed by a second call."""
    model, train_set, val_set, config = _setup()
    with pytest.raises(_Stop):
        train(model, train_set, val_set, config, _StopOnce(make_loss("none", "mnist")), out)
    # A real crash ends the process and its DDP replica with it; here the interrupted replica
    # must be gone on every rank before the resumed one starts its collectives.
    del model
    gc.collect()
    torch.distributed.barrier()
    model, train_set, val_set, config = _setup()  # a fresh process would start like this
    train(model, train_set, val_set, config, make_loss("none", "mnist"), out)


def test_shard_is_the_distributed_sampler_stream_cut_into_the_global_batches():
    """Rank r's share of global batch i = torch's DistributedSampler stream, batch i."""
    from torch.utils.data import DistributedSampler

    from onnlab.training.distributed import World, local_batch_size, shard

    n, bs, world, seed, epoch = 103, 12, 3, 5, 2
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    b = local_batch_size(bs, world)
    for rank in range(world):
        sampler = DistributedSampler(
            range(n), world, rank, shuffle=True, seed=seed * 1_000_003, drop_last=True
        )
        sampler.set_epoch(epoch)
        stream = torch.tensor(list(sampler))
        for i in range(n // bs):
            mine = shard(order[i * bs : (i + 1) * bs], World(rank, world))
            assert torch.equal(mine, stream[i * b : (i + 1) * b])
    with pytest.raises(ConfigError, match="multiple of 3"):
        local_batch_size(128, 3)


@pytest.mark.timeout(180)
def test_ddp_training_resumes_and_matches_single_process(tmp_path):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    run_two_ranks([__file__, str(ddp_dir)])
    model, train_set, val_set, config = _setup()
    single = train(model, train_set, val_set, config, make_loss("none", "mnist"), single_dir)

    history = json.loads((ddp_dir / "metrics.json").read_text())
    assert history["world_size"] == WORLD
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]  # epoch 1 kept, 2 redone
    assert sorted(p.name for p in ddp_dir.iterdir()) == sorted(
        ["config.json", "curves.png", "metrics.json", "model.pt", STATE_FILE]
    )  # rank 0 alone wrote: no per-rank or temporary files
    ddp_w = read_checkpoint(ddp_dir / "model.pt")["state_dict"]
    one_w = read_checkpoint(single_dir / "model.pt")["state_dict"]
    assert ddp_w.keys() == one_w.keys()
    for name in ddp_w:
        torch.testing.assert_close(ddp_w[name], one_w[name], rtol=1e-4, atol=5e-4, msg=name)
    start = _setup()[0].state_dict()
    floats = [k for k in start if start[k].is_floating_point()]
    assert max((ddp_w[k] - start[k]).abs().max().item() for k in floats) > 1e-2  # it trained
    for ep_ddp, ep_one in zip(history["epochs"], single["epochs"], strict=True):
        assert ep_ddp["train"]["loss"] == pytest.approx(ep_one["train"]["loss"], rel=1e-4)
        assert ep_ddp["val"]["accuracy"] == pytest.approx(ep_one["val"]["accuracy"], abs=1 / 64)


@pytest.mark.timeout(180)
def test_torchrun_module_entry_point_writes_one_run_folder(tmp_path, monkeypatch):
    """`torchrun -m onnlab train ...`: ranks agree on rank 0's run-folder name."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("ONNLAB_RUNS", str(runs))
    args = ["--task", "mnist", "--epochs", "1", "--limit", "128", "--eval-limit", "64"]
    run_two_ranks(["-m", "onnlab", "train", *args, "--no-progress", "--device", "cpu"])
    folders = list(runs.iterdir())
    assert len(folders) == 1, folders
    summary = json.loads((folders[0] / "summary.json").read_text())
    assert summary["test"]["n"] == 1
    assert json.loads((folders[0] / "seed-0" / "metrics.json").read_text())["world_size"] == WORLD


if __name__ == "__main__":
    torch.set_num_threads(1)
    from onnlab.training.distributed import init_from_env

    init_from_env()
    _worker(Path(sys.argv[1]))
