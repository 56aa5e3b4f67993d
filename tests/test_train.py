"""Tests for mpqbench.train: evaluation arithmetic, learning, exact resume, checkpoint format, DDP, AMP."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import mpqbench.train as train_mod
from mpqbench.errors import UserError
from mpqbench.data import TensorImageDataset
from mpqbench.train import TrainConfig, cosine_factor, default_param_groups, evaluate, train
from killswitch import killed_after_first_save

# Forward MACs per sample of _mlp(): Linear(48, 16) + Linear(16, 3).
MLP_MACS = 48 * 16 + 16 * 3


def _images(n: int = 96, seed: int = 0) -> TensorImageDataset:
    """Separable 3-class toy images [n, 3, 4, 4] in 0..1: class c = channel c bright. Crop and flip keep
    the class, so the in-memory loader's augmentation (an RNG consumer) is on."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, 3, 4, 4, generator=g) * 0.3
    x[torch.arange(n), y] += 0.7
    return TensorImageDataset(x, y, mean=(0.5,) * 3, std=(0.25,) * 3, classes=("a", "b", "c"), crop_pad_px=1,
                              flip=True)


def _mlp(seed: int = 0) -> nn.Module:
    """Tiny net with BN (buffers), dropout (RNG) and biases (no-decay group)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(16, 3))


class _ListDataset(Dataset):
    """A plain per-item dataset, to exercise the DataLoader path."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


class _FixedLogits(nn.Module):
    """Returns the logits stored for each sample index (input = the index as a float)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x.long().view(-1)]


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, lr=0.1, batch_size=16, seed=0, device="cpu", weight_decay=5e-4)
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("as_list", [False, True])
def test_evaluate_exact_metrics(as_list: bool) -> None:
    logits = torch.tensor(
        [
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 0: top-1 hit
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 4: top-5 hit only
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 5: miss
            [0.0, 0.0, 9.0, 0.0, 0.0, 1.0],  # label 2: top-1 hit
        ]
    )
    labels = torch.tensor([0, 4, 5, 2])
    ds = TensorDataset(torch.arange(4).float().unsqueeze(1), labels)
    if as_list:
        ds = _ListDataset(*ds.tensors)
    model = _FixedLogits(logits).train()
    out = evaluate(model, ds, batch_size=3, device="cpu")
    expected_loss = sum(
        (torch.logsumexp(logits[i], 0) - logits[i, labels[i]]).item() for i in range(4)
    ) / 4
    assert out["top1"] == 50.0
    assert out["top5"] == 75.0
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert model.training, "evaluate must restore the train/eval mode"


def test_evaluate_top5_with_fewer_classes() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.0], [3.0, 2.0, 1.0]])
    ds = TensorDataset(torch.arange(2).float().unsqueeze(1), torch.tensor([2, 1]))
    out = evaluate(_FixedLogits(logits), ds, device="cpu")
    assert out["top1"] == 0.0
    assert out["top5"] == 100.0  # k = min(5, 3) = 3 covers every class


# ---------------------------------------------------------------------------------------------- helpers


def test_weight_decay_groups_skip_bn_bias_and_steps() -> None:
    model = _mlp()
    model.step = nn.Parameter(torch.tensor(0.5))  # stands in for an LSQ step size
    groups = default_param_groups(model, 1e-4)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[1].weight), id(model[5].weight)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_config_rejects_bad_values() -> None:
    with pytest.raises(UserError, match="epochs"):
        _cfg(epochs=-1)
    with pytest.raises(UserError, match="epochs >= 1"):  # a config of 0 epochs is for evaluate-only pretrain
        train(_mlp(), _images(n=32), _cfg(epochs=0), ckpt_path=Path("/nonexistent/ck.pt"), progress=False)
    with pytest.raises(UserError, match="learning rate"):
        _cfg(lr=0.0)


# ---------------------------------------------------------------------------------------------- training


def test_training_reduces_loss_and_ends_with_zero_lr(tmp_path) -> None:
    ds = _images()
    model = _mlp()
    before = evaluate(model, ds, device="cpu")
    stats = train(model, ds, _cfg(epochs=4), ckpt_path=tmp_path / "ck.pt", val_ds=ds, progress=False)
    after = evaluate(model, ds, device="cpu")
    assert after["loss"] < 0.5 * before["loss"]
    assert after["top1"] == 100.0
    assert stats["epochs"] == 4 and len(stats["history"]) == 4
    assert stats["final_train_loss"] == stats["history"][-1]["train_loss"]
    assert stats["history"][-1]["val_top1"] == 100.0
    assert stats["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    # 96 samples, batch 16 → 6 steps/epoch; epoch 1 ends at step 6 of 24
    assert stats["history"][0]["lr"] == pytest.approx(0.1 * cosine_factor(6, 24))
    # MACs: forward + backward is 2-3× the forward (the first layer's input gradient is not needed),
    # × 4 epochs × 96 samples
    assert 2 * MLP_MACS <= stats["macs_processed"] / (4 * 96) <= 3 * MLP_MACS


def test_per_item_dataset_trains_like_in_memory_dataset(tmp_path) -> None:
    ds = _images(n=40)
    m1, m2 = _mlp(), _mlp()
    cfg = _cfg(epochs=2, augment=False)
    train(m1, ds, cfg, ckpt_path=tmp_path / "a.pt", progress=False)
    x, y = ds.batch(torch.arange(len(ds)))
    train(m2, _ListDataset(x, y), cfg, ckpt_path=tmp_path / "b.pt", progress=False)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_progress_is_silent_when_stderr_is_not_a_tty(tmp_path, capsys) -> None:
    train(_mlp(), _images(n=32), _cfg(epochs=1), ckpt_path=tmp_path / "ck.pt", progress=True)
    assert capsys.readouterr().err == ""


def test_kill_and_resume_gives_identical_weights(tmp_path, monkeypatch) -> None:
    ds = _images(n=50)  # 50 = 3 full batches of 16 + a dropped partial one; augmentation on
    cfg = _cfg(epochs=3)

    reference = _mlp(seed=1)
    ref_stats = train(reference, ds, cfg, ckpt_path=tmp_path / "ref.pt", progress=False)

    # Run again and "kill" the process right after the epoch-1 checkpoint is on disk.
    with killed_after_first_save(monkeypatch, train_mod):
        train(_mlp(seed=1), ds, cfg, ckpt_path=tmp_path / "run.pt", progress=False)
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    assert state["epoch"] == 1

    # A fresh process: different model init, scrambled global RNG.
    torch.manual_seed(12345)
    resumed = _mlp(seed=7)
    stats = train(resumed, ds, cfg, ckpt_path=tmp_path / "run.pt", progress=False)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert stats["final_train_loss"] == ref_stats["final_train_loss"]
    assert [h["train_loss"] for h in stats["history"]] == [h["train_loss"] for h in ref_stats["history"]]
    assert stats["macs_processed"] == ref_stats["macs_processed"]

    # Resuming a finished run trains nothing and changes nothing.
    again = _mlp(seed=9)
    stats2 = train(again, ds, cfg, ckpt_path=tmp_path / "run.pt", progress=False)
    assert torch.equal(again[1].weight, reference[1].weight)
    assert stats2["final_train_loss"] == ref_stats["final_train_loss"]


def test_resume_refuses_a_checkpoint_from_other_settings(tmp_path) -> None:
    ds = _images(n=32)
    train(_mlp(), ds, _cfg(epochs=1), ckpt_path=tmp_path / "ck.pt", progress=False)
    with pytest.raises(UserError, match="lr"):
        train(_mlp(), ds, _cfg(epochs=1, lr=0.05), ckpt_path=tmp_path / "ck.pt", progress=False)


def test_checkpoint_is_complete_and_weights_only_loadable(tmp_path) -> None:
    ds = _images(n=32)
    model = _mlp()
    train(model, ds, _cfg(epochs=2), ckpt_path=tmp_path / "ck.pt", progress=False)
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng"} <= set(state)
    assert state["epoch"] == 2
    assert state["scheduler"]["last_epoch"] == 2 * 2
    assert state["optimizer"]["state"], "momentum buffers must be saved"
    assert isinstance(state["rng"][0]["torch"], torch.Tensor)
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v), k
    assert not list(tmp_path.glob("*.tmp")), "atomic write leaves no temp files"


def test_amp_is_not_used_on_cpu(tmp_path) -> None:
    seen: list[bool] = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"))
            assert x.dtype == torch.float32
            return self.fc(x)

    train(Probe(), _images(n=32), _cfg(epochs=1, amp=True), ckpt_path=tmp_path / "ck.pt", progress=False)
    assert seen and not any(seen)
    assert isinstance(train_mod._autocast(torch.device("cpu"), True), contextlib.nullcontext)
    assert isinstance(train_mod._autocast(torch.device("cuda"), False), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on CPU-only machines
        ctx = train_mod._autocast(torch.device("cuda"), True)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, tmp: str) -> None:
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    saves: list[str] = []
    real_save = train_mod.torch_save

    def counting_save(obj, path):
        saves.append(str(path))
        real_save(obj, path)

    train_mod.torch_save = counting_save
    model = _mlp(seed=rank)  # different inits: DDP must broadcast rank 0's
    stats = train(model, _images(n=64), _cfg(epochs=1, batch_size=8), ckpt_path=f"{tmp}/ck.pt", progress=False)
    torch.save({"state": model.state_dict(), "saves": saves, "stats": stats}, f"{tmp}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="gloo backend unavailable")
def test_ddp_two_ranks_stay_in_sync(tmp_path) -> None:
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    for (name, a), b in zip(r0["state"].items(), r1["state"].values()):
        assert torch.equal(a, b), name
    assert len(r0["saves"]) == 1 and r1["saves"] == []
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["world_size"] == 2 and len(ck["rng"]) == 2
    assert torch.equal(ck["model"]["1.weight"], r0["state"]["1.weight"])
    # 64 samples sharded over 2 ranks: 4 steps of 8 per rank; loss and MACs are global
    assert r0["stats"]["final_train_loss"] == r1["stats"]["final_train_loss"]
    assert r0["stats"]["macs_processed"] == r1["stats"]["macs_processed"]
    assert 2 * MLP_MACS <= r0["stats"]["macs_processed"] / 64 <= 3 * MLP_MACS
    assert ck["scheduler"]["last_epoch"] == 4


# ---------------------------------------------------------------------------------------------- precision


def test_autocast_for_and_precision_setting() -> None:
    assert isinstance(train_mod.autocast_for("cpu", "fp32"), contextlib.nullcontext)
    ctx = train_mod.autocast_for(torch.device("cpu"), "bf16")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and ctx.device == "cpu"
    with pytest.raises(UserError, match="precision"):
        train_mod.autocast_for("cpu", "fp16")
    with pytest.raises(UserError, match="precision"):
        _cfg(precision="half")
    with pytest.raises(UserError, match="CPU or CUDA"):
        train_mod.autocast_for("meta", "bf16")


def test_bf16_training_runs_the_forward_under_cpu_autocast(tmp_path) -> None:
    seen: list[tuple[bool, torch.dtype]] = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.fc(x)
            seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
            return out

    stats = train(Probe(), _images(n=32), _cfg(epochs=1, precision="bf16"), ckpt_path=tmp_path / "ck.pt",
                  progress=False)
    assert seen and all(on and dtype == torch.bfloat16 for on, dtype in seen)
    assert math.isfinite(stats["final_train_loss"])
    assert torch.load(tmp_path / "ck.pt", weights_only=True)["config"]["precision"] == "bf16"


def test_evaluate_bf16_keeps_metrics_in_fp32_and_close_to_fp32() -> None:
    from mpqbench.quant import quantize_model

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    quantize_model(net, {"0": (8, 8), "2": (4, 4), "6": (8, 8)})
    ds = _images(n=64)
    net.eval()(ds.batch(torch.arange(8))[0])  # calibrate
    fp32 = evaluate(net, ds, batch_size=16, device="cpu")
    bf16 = evaluate(net, ds, batch_size=16, device="cpu", precision="bf16")
    assert isinstance(bf16["loss"], float) and bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05)
    assert abs(bf16["top1"] - fp32["top1"]) <= 100 * 3 / 64  # a few of 64 near-tied images may flip


def test_evaluate_quantizes_each_weight_once(monkeypatch) -> None:
    from mpqbench.quant import quantize_model
    from mpqbench.quant.layers import _Quantized

    net = quantize_model(nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3)),
                         {"1": (4, 4), "3": (8, 8)})
    calls = []
    real = _Quantized.quantized_weight
    monkeypatch.setattr(_Quantized, "quantized_weight", lambda self: calls.append(1) or real(self))
    evaluate(net, _images(n=96), batch_size=8, device="cpu")  # 12 batches
    assert len(calls) == 2


def test_tune_malloc_is_idempotent() -> None:
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    first = train_mod.tune_malloc()
    assert train_mod.tune_malloc() == first
