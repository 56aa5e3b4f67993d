"""Training loops: FP pre-training, QAT fine-tuning of a policy, evaluation.

One loop, :func:`train`, serves both stages:

- SGD with momentum (Nesterov off); weight decay only on parameters with ``ndim >= 2`` (conv/linear
  weights) — BN affine parameters, biases and LSQ step sizes (shape ``[]`` or ``[C]``) are not decayed;
- a per-step cosine learning rate over the whole run, ``lr·½(1 + cos(π·step/total_steps))``, no warm-up;
- batches from :func:`mpqbench.data.make_loader` (order and augmentation a pure function of
  ``(seed, epoch, rank)``), so a run resumed from its checkpoint reaches the same final weights as an
  uninterrupted one (same device and thread count);
- a checkpoint at the end of every epoch (model, optimizer, scheduler, epoch, RNG states), written
  atomically, resumed from automatically when ``ckpt_path`` exists;
- ``cfg.precision``: "fp32" (default) or "bf16", the network's forward under ``torch.autocast`` in bfloat16 on
  the CPU or CUDA (:func:`autocast_for`; the LSQ quantizers compute their steps and rounding in fp32 whatever
  the precision, the loss is taken in fp32); with "fp32", ``cfg.amp`` keeps the earlier bf16 autocast on CUDA
  only. :func:`evaluate` takes the same ``precision`` (default fp32) and computes every quantized layer's
  weight once per call (:func:`mpqbench.quant.frozen_weights`), not once per batch;
- DistributedDataParallel when launched by torchrun (``WORLD_SIZE > 1``): gloo on CPU, nccl on CUDA,
  each rank a ``DistributedSampler`` shard, ``batch_size`` per process, rank 0 writes checkpoints;
- ``macs_processed`` from :class:`mpqbench.cost.CostMeter`: MACs per sample (FlopCounterMode on
  the first real step, forward + backward) × samples processed by all ranks.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from mpqbench.cost import CostMeter
from mpqbench.data import make_loader
from mpqbench.errors import UserError
from mpqbench.utils import SEED_MAX, resolve_device, seed_everything, torch_save

CKPT_VERSION = 1
PRECISIONS = ("fp32", "bf16")
# Config fields that change the training trajectory: a checkpoint written under other values is not resumed.
_TRAJECTORY_FIELDS = ("epochs", "lr", "batch_size", "seed", "momentum", "weight_decay", "label_smoothing", "augment")


@dataclass(kw_only=True)
class TrainConfig:
    """Hyper-parameters of one training run (keyword-only).

    ``batch_size`` is per process: under DDP the global batch is ``batch_size × WORLD_SIZE``.
    ``precision``: "fp32" or "bf16" (the forward under bf16 autocast on CPU or CUDA, see
    :func:`autocast_for`). ``amp`` (with "fp32") enables bf16 autocast on CUDA only. ``augment``: random crop
    + flip for in-memory datasets
    (file-backed datasets augment through their split transform; see ``mpqbench.data.make_loader``).
    ``num_workers`` applies to file-backed datasets.
    """

    epochs: int
    lr: float
    batch_size: int
    seed: int
    momentum: float = 0.9
    weight_decay: float = 1e-4
    device: str = "auto"
    amp: bool = True
    label_smoothing: float = 0.0
    augment: bool = True
    num_workers: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.epochs < 0:
            raise UserError(f"epochs must be >= 0, got {self.epochs}; pass --epochs 0 (evaluate only) or more")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"learning rate must be > 0, got {self.lr}; pass a positive --lr")
        if self.batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {self.batch_size}; pass a positive --batch-size")
        if not 0 <= self.seed <= SEED_MAX:
            raise UserError(f"seed must be in [0, {SEED_MAX}], got {self.seed}; pass a --seed in that range")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UserError(f"weight decay must be >= 0, got {self.weight_decay}; pass a non-negative --weight-decay")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


# ----------------------------------------------------------------------------------------------------------
# runtime: device and distributed setup


@dataclass(frozen=True)
class _Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _runtime(device: str) -> _Runtime:
    """The device to use and, under torchrun (``WORLD_SIZE > 1``), an initialised process group.

    The process group is created once per process (gloo on CPU, nccl on CUDA) and destroyed at exit.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return _Runtime(dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        atexit.register(_destroy_process_group)
    return _Runtime(dev, dist.get_rank(), dist.get_world_size())


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a UserError."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


def autocast_for(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The context for a network forward at ``precision``: bf16 ``torch.autocast`` on a CPU or CUDA device
    for "bf16", a no-op context for "fp32".

    Under it, convolutions and linear layers run in bfloat16; the LSQ quantizers of :mod:`mpqbench.quant`
    still compute in fp32 (their input is read as fp32, the result rounded back to the input's dtype), and
    callers take losses and metrics from ``logits.float()``. Use it around the forward only (the backward
    follows the forward's dtypes).
    """
    dev = torch.device(device) if isinstance(device, str) else device
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"precision bf16 needs a CPU or CUDA device, not {dev.type}; use --precision fp32")
    return torch.autocast(dev.type, dtype=torch.bfloat16)


def _autocast(device: torch.device, amp: bool, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision`` "bf16" (CPU or CUDA), or on CUDA when ``amp``; else a no-op context."""
    if precision == "bf16" or (amp and device.type == "cuda"):
        return autocast_for(device, "bf16")
    return contextlib.nullcontext()


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_malloc_tuned = False


def tune_malloc() -> bool:
    """Keep freed heap memory in the process for reuse (glibc only; once per process; True if applied).

    By default glibc hands large freed blocks back to the kernel (``munmap``, heap trimming), so every new
    activation or gradient tensor of a training step starts on fresh pages: ~20,000-50,000 page faults per
    ResNet-20 step on 28 px, about a tenth of the step's time. With mmap for blocks over 32 MiB only, no
    trimming below 1 GiB and 64 MiB of top padding, the process reuses its own freed memory (peak RSS stays,
    as it would after the first step anyway). Numerics are unchanged.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20)))
    _malloc_tuned = ok
    return ok


# ----------------------------------------------------------------------------------------------------------
# optimisation helpers


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two SGD groups: weights with ``ndim >= 2`` decayed; BN affine, biases and LSQ steps not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def cosine_factor(step: int, total_steps: int) -> float:
    """Learning-rate multiplier at optimizer step ``step`` of ``total_steps`` (1 → 0, per step)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _rng_state() -> dict[str, Any]:
    """Global RNG states, in types that ``torch.load(weights_only=True)`` accepts."""
    _, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"],
         np_state["cached_gaussian"])
    )


def _gather_rng(rt: _Runtime) -> list[dict[str, Any]]:
    """Every rank's RNG state (index = rank); gathered onto all ranks under DDP."""
    state = _rng_state()
    if rt.world == 1:
        return [state]
    states: list[Any] = [None] * rt.world
    dist.all_gather_object(states, state)
    return states


def _check_resumable(state: Mapping[str, Any], cfg: TrainConfig, num_samples: int, world: int, path: Path) -> None:
    saved = state.get("config", {})
    mismatched = [k for k in _TRAJECTORY_FIELDS if saved.get(k) != getattr(cfg, k)]
    if state.get("num_samples") != num_samples:
        mismatched.append("num_samples")
    if state.get("world_size") != world:
        mismatched.append("world_size")
    if state.get("version") != CKPT_VERSION or mismatched:
        raise UserError(
            f"checkpoint {path} was written by a different run ({', '.join(mismatched) or 'version'} differ); "
            "delete it to start over or rerun with the same settings"
        )


def read_resume(path: str | os.PathLike) -> dict[str, Any]:
    """The resume checkpoint at ``path`` (weights-only load), or a :class:`UserError` saying to delete it."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or malicious files all mean: not ours
        raise UserError(f"resume checkpoint {path} cannot be read ({type(exc).__name__}); delete it to start "
                        "the run over") from None
    required = ("version", "epoch", "model", "optimizer", "scheduler", "rng", "config", "history")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise UserError(f"resume checkpoint {path} is not an mpqbench training checkpoint; delete it to start "
                        "the run over")
    return state


def resume_mismatch(state: Mapping[str, Any], run_key: Mapping[str, Any]) -> str | None:
    """Why the resume checkpoint ``state`` belongs to another run than ``run_key`` (None: the same run).

    ``run_key`` is ``{"sha256": hash of fields, "fields": {name: value}}`` (see :func:`make_run_key`)."""
    saved = state.get("run_key")
    if not isinstance(saved, Mapping) or "sha256" not in saved:
        return "it records no run key (written by an older mpqbench)"
    if saved.get("sha256") == run_key["sha256"]:
        return None
    old, new = saved.get("fields") or {}, run_key["fields"]
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return f"{', '.join(differ) or 'its inputs'} differ{'s' if len(differ) == 1 else ''}"


def make_run_key(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``{"sha256": sha256 of the canonical JSON of fields, "fields": fields}`` for :func:`train`'s ``run_key``."""
    from mpqbench.utils import json_sha256

    fields = dict(fields)
    return {"sha256": json_sha256(fields), "fields": fields}


def discard_stale_resume(path: str | os.PathLike, run_key: Mapping[str, Any], *, what: str = "run") -> bool:
    """Delete the resume checkpoint at ``path`` when it was written for another run than ``run_key``.

    Prints one ``warning:`` line on stderr saying why; returns True when a file was discarded. An unreadable
    file is a :class:`UserError` (and is kept). Call it after every input has been checked, before any work.
    """
    path = Path(path)
    if not path.exists():
        return False
    reason = resume_mismatch(read_resume(path), run_key)
    if reason is None:
        return False
    print(f"warning: {path} is the resume checkpoint of another {what} ({reason}); discarding it and starting "
          "clean", file=sys.stderr)
    path.unlink(missing_ok=True)
    return True


# ----------------------------------------------------------------------------------------------------------
# train / evaluate


def train(
    model: nn.Module,
    train_ds: Dataset,
    cfg: TrainConfig,
    *,
    ckpt_path: str | os.PathLike,
    val_ds: Dataset | None = None,
    progress: bool = True,
    param_groups: list[dict[str, Any]] | None = None,
    run_key: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place with SGD + per-step cosine LR; checkpoint every epoch; resume if possible.

    ``run_key`` (optional, :func:`make_run_key`): what determines the result beyond ``cfg`` (inputs' hashes,
    dataset, subset, ...). It is stored in the checkpoint; a checkpoint with another key is discarded with a
    warning and the run starts clean. Without it, a checkpoint of other settings is a :class:`UserError`.
    An unreadable checkpoint is a :class:`UserError` either way.

    ``train_ds`` yields ``(float tensor C×H×W, int label)``. ``param_groups`` (optional) are handed to
    ``torch.optim.SGD`` as they are (keys a group lacks default to ``cfg``); by default
    :func:`default_param_groups`. A fresh run seeds python/numpy/torch with ``cfg.seed + rank``.
    The model ends on the resolved device.

    Returns ``{"epochs", "wall_s", "macs_processed", "final_train_loss", "history"}``: ``wall_s`` is
    the whole run's wall time (across resumes; data loading and checkpoints included),
    ``macs_processed`` summed over ranks and resumes, ``final_train_loss`` the last epoch's mean loss,
    ``history`` one dict per epoch (``epoch``, ``train_loss``, ``lr``, and ``val_top1``/``val_top5``/
    ``val_loss`` when ``val_ds`` is given).
    """
    if cfg.epochs < 1:
        raise UserError(f"training needs --epochs >= 1, got {cfg.epochs}")
    t0 = time.perf_counter()
    tune_malloc()
    rt = _runtime(cfg.device)
    ckpt_path = Path(ckpt_path)
    num_samples = len(train_ds)
    if num_samples == 0:
        raise UserError("the training set is empty; check the dataset root and --subset")
    # Drop a trailing partial batch (BatchNorm cannot train on a batch of one) unless it is the only one.
    shard_size = math.ceil(num_samples / rt.world)
    loader = make_loader(train_ds, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                         drop_last=shard_size > cfg.batch_size, augment=cfg.augment,
                         num_workers=cfg.num_workers, distributed=rt.world > 1)
    total_steps = cfg.epochs * len(loader)

    model.to(rt.device)
    groups = param_groups if param_groups is not None else default_param_groups(model, cfg.weight_decay)
    optimizer = torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total_steps))

    start_epoch, history = 0, []
    prior_wall_s, prior_macs, final_loss = 0.0, 0, math.nan
    if run_key is not None and rt.is_main:
        discard_stale_resume(ckpt_path, run_key)
    if rt.world > 1:
        dist.barrier()
    if ckpt_path.exists():
        state = read_resume(ckpt_path)
        _check_resumable(state, cfg, num_samples, rt.world, ckpt_path)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"][rt.rank])
        except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise UserError(f"resume checkpoint {ckpt_path} does not fit this model ({type(exc).__name__}); "
                            "delete it to start the run over") from None
        start_epoch, history = state["epoch"], list(state["history"])
        prior_wall_s, prior_macs, final_loss = state["wall_s"], state["macs_processed"], state["final_train_loss"]
    else:
        seed_everything(cfg.seed + rt.rank)

    net: nn.Module = model
    if rt.world > 1:
        net = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    meter = CostMeter(rt.device, world_size=rt.world)
    show = progress and rt.is_main and sys.stderr.isatty()

    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        loader.set_epoch(epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
        seen = torch.zeros((), dtype=torch.float64, device=rt.device)
        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False)
        for i, (x, y) in enumerate(loader):
            x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
            with meter.step(len(x)):
                with _autocast(rt.device, cfg.amp, cfg.precision):
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(x)
            seen += len(x)
            bar.update()
            if show and i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.3g}")
        bar.close()
        if rt.world > 1:
            dist.all_reduce(loss_sum)
            dist.all_reduce(seen)
            # BN running stats drift apart in each rank's last forward: keep rank 0's, as the checkpoint does.
            for buf in model.buffers():
                dist.broadcast(buf, 0)
        final_loss = (loss_sum / seen).item()
        if not math.isfinite(final_loss):
            raise UserError(
                f"training diverged (mean loss {final_loss} in epoch {epoch + 1}); lower the learning rate "
                f"(now {cfg.lr})"
            )
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": final_loss, "lr": scheduler.get_last_lr()[0]}
        if val_ds is not None:
            val = evaluate(model, val_ds, batch_size=max(cfg.batch_size, 256), device=rt.device,
                           precision=cfg.precision)
            record.update({f"val_{k}": v for k, v in val.items()})
        history.append(record)
        rngs = _gather_rng(rt)
        if rt.is_main:
            torch_save(
                {
                    "version": CKPT_VERSION,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rngs,
                    "config": asdict(cfg),
                    "num_samples": num_samples,
                    "world_size": rt.world,
                    "history": history,
                    "final_train_loss": final_loss,
                    "wall_s": prior_wall_s + time.perf_counter() - t0,
                    "macs_processed": prior_macs + meter.macs_processed,
                    **({"run_key": dict(run_key)} if run_key is not None else {}),
                },
                ckpt_path,
            )
        if show:
            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if rt.world > 1:
            dist.barrier()

    return {
        "epochs": cfg.epochs,
        "wall_s": prior_wall_s + time.perf_counter() - t0,
        "macs_processed": prior_macs + meter.macs_processed,
        "final_train_loss": final_loss,
        "history": history,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, ds: Dataset, *, batch_size: int = 256, device: str | torch.device = "auto",
    precision: str = "fp32",
) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) and mean cross-entropy of ``model`` on ``ds``.

    The forward runs at ``precision`` ("fp32", or "bf16" under :func:`autocast_for`); logits, loss and
    metrics are fp32. The weights of quantized layers are fake-quantized once for the whole call
    (:func:`mpqbench.quant.frozen_weights`; the model does not change during it), the activations per batch.
    Top-5 uses ``k = min(5, num_classes)``. The model is moved to ``device`` and put back in the
    train/eval mode it was in.
    """
    from mpqbench.quant import frozen_weights

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    num_samples = len(ds)
    if num_samples == 0:
        raise UserError("the evaluation set is empty; check the dataset root and split")
    tune_malloc()
    was_training = model.training
    model.to(dev).eval()
    top1 = torch.zeros((), dtype=torch.int64, device=dev)
    top5 = torch.zeros((), dtype=torch.int64, device=dev)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    loader = make_loader(ds, batch_size=batch_size, shuffle=False, seed=0)
    try:
        with frozen_weights(model):
            for x, y in loader:
                x, y = x.to(dev), y.to(dev)
                with autocast_for(dev, precision):
                    out = model(x)
                logits = out.float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
                hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
                top1 += hits[:, 0].sum()
                top5 += hits.any(dim=1).sum()
    finally:
        model.train(was_training)
    return {
        "top1": 100.0 * top1.item() / num_samples,
        "top5": 100.0 * top5.item() / num_samples,
        "loss": loss_sum.item() / num_samples,
    }
