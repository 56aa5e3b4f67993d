"""The pipeline stages behind the CLI: pretrain, finetune, evaluate (→ run record), aggregate.

Each stage reads and writes files only through checked loaders and atomic writers, so every stage can
be re-run after a kill: training resumes from its per-epoch checkpoint, and a stage's output appears
only when the stage has finished.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpqbench.data import dataset_info, load_split, make_loader, subset as take_subset
from mpqbench.errors import UserError
from mpqbench.models import get_model
from mpqbench.policy import Policy
from mpqbench.records import RunRecord, env_info, git_info, run_id, utc_now
from mpqbench.runs import AGGREGATE_FILES, EVAL_BATCH_SIZE, FIXED_BITS, Layout
from mpqbench.train import TrainConfig, evaluate, make_run_key, read_resume, train
from mpqbench.utils import (check_writable, check_writable_dir, file_sha256, json_sha256, seed_everything, torch_save,
                            write_json)


def _resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume")


def load_checkpoint(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; create it first (see `mpqbench --help`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means a bad file for the user
        raise UserError(f"{what} {path} cannot be read as a checkpoint ({type(exc).__name__}); regenerate it") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "meta" not in ckpt:
        raise UserError(f"{what} {path} is not an mpqbench checkpoint (no state_dict/meta); regenerate it")
    return ckpt


# the FP checkpoint's geometry: what the model is rebuilt from
_GEOMETRY = ("arch", "num_classes", "in_channels", "input_size", "width")


def check_fp_meta(meta: Any, path: Path, what: str = "FP checkpoint", *, needs: tuple[str, ...] = ()) -> dict[str, Any]:
    """The meta of an FP checkpoint if it names a geometry (and the keys in ``needs``), else a UserError."""
    fix = "regenerate it with `mpqbench pretrain`"
    if not isinstance(meta, dict):
        raise UserError(f"{what} {path} has no meta dict; {fix}")
    for key in ("arch", "dataset", *_GEOMETRY[1:], *needs):
        if key not in meta or meta[key] is None:
            raise UserError(f"{what} {path} has no meta.{key}; it was not written by `mpqbench pretrain` — {fix}")
    if not isinstance(meta["arch"], str) or not isinstance(meta["dataset"], str):
        raise UserError(f"{what} {path} has a malformed meta.arch/meta.dataset; {fix}")
    for key in ("num_classes", "in_channels", "input_size"):
        if isinstance(meta[key], bool) or not isinstance(meta[key], int) or meta[key] < 1:
            raise UserError(f"{what} {path} has meta.{key} = {meta[key]!r}, not a positive integer; {fix}")
    width = meta["width"]
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (width > 0 and math.isfinite(width)):
        raise UserError(f"{what} {path} has meta.width = {width!r}, not a positive number; {fix}")
    return meta


def _names(keys: list[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state: Any, what: str, fix: str) -> None:
    """UserError (one line) unless ``state`` has exactly ``model``'s state-dict keys, with its shapes."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what} holds no state dict (name -> tensor); {fix}")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = [f"{label}: {_names(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("other shapes", shapes)) if keys]
    if problems:
        raise UserError(f"{what} does not fit the model ({'; '.join(problems)}); {fix}")


def _describe(meta: dict[str, Any]) -> str:
    return (f"a {meta['arch']} of width {meta['width']:g} with {meta['num_classes']} classes, {meta['in_channels']} "
            f"input channels at {meta['input_size']} px")


def _model_from_meta(meta: dict[str, Any]) -> nn.Module:
    return get_model(meta["arch"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                     input_size=meta["input_size"], width=meta["width"])


def fp_model(ckpt: dict[str, Any], path: Path, what: str = "FP checkpoint") -> nn.Module:
    """The FP model of a loaded checkpoint: built from its meta's geometry, its state dict checked and loaded."""
    meta = check_fp_meta(ckpt["meta"], path, what)
    model = _model_from_meta(meta)
    check_state_dict(model, ckpt["state_dict"], f"{what} {path}",
                     f"its meta says {_describe(meta)}; regenerate it with `mpqbench pretrain`")
    model.load_state_dict(ckpt["state_dict"])
    return model


def _check_classes(meta: dict[str, Any], path: Path, dataset: str, data_root: str | None) -> None:
    info = dataset_info(dataset, root=data_root)
    if (meta["num_classes"], meta["in_channels"]) != (info.num_classes, info.in_channels):
        raise UserError(f"FP checkpoint {path} has {meta['num_classes']} classes and {meta['in_channels']} input "
                        f"channels, {dataset} has {info.num_classes} and {info.in_channels}; use the FP model "
                        f"pretrained on {dataset}")


def _train_split(dataset: str, data_root: str | None, size: int, subset: int | None, seed: int):
    ds = load_split(dataset, "train", root=data_root, input_size=size)
    return take_subset(ds, count=subset, seed=seed) if subset else ds


# ---- pretrain ----------------------------------------------------------------------------------------------
def pretrain(*, arch: str, dataset: str, data_root: str | None, input_size: int | None, width: float,
             subset: int | None, cfg: TrainConfig, out: Path, progress: bool = True,
             weights: str | None = None) -> dict[str, Any]:
    """Train the FP model of ``arch`` on ``dataset``; write ``out`` ({state_dict, meta}) and ``out``.json.

    Every input is checked before any work: where the outputs go, the arch and dataset, the geometry, and
    that ``cfg.epochs`` 0 (the start weights as they are) comes with ``weights``. A resume checkpoint
    (``out``.resume) of another run (other arch, dataset, settings) is discarded with a warning."""
    out = Path(out)
    for path in (out, out.with_name(out.name + ".json"), _resume_path(out)):
        check_writable(path, "--out")
    if not cfg.epochs and weights is None:
        raise UserError("--epochs 0 keeps the start weights as they are, and without --weights they are random; "
                        "pass --weights FILE|torchvision or --epochs 1 or more")
    if subset is not None and subset < 1:
        raise UserError(f"--subset {subset} must be >= 1 (leave it out for the whole training split)")
    if input_size is not None and input_size < 1:
        raise UserError(f"--input-size {input_size} must be >= 1 (leave it out for the dataset's native size)")
    info = dataset_info(dataset, root=data_root)
    size = input_size or info.native_size
    seed_everything(cfg.seed)  # the random init is part of the run: same seed, same FP model
    model = get_model(arch, num_classes=info.num_classes, in_channels=info.in_channels, input_size=size,
                      width=width, weights=weights)
    if cfg.epochs and _resume_path(out).exists():
        read_resume(_resume_path(out))  # an unreadable one is a user error now, not after loading the data
    train_ds = _train_split(dataset, data_root, size, subset, cfg.seed)
    test_ds = load_split(dataset, "test", root=data_root, input_size=size)
    weights_id = weights
    if cfg.epochs and weights is not None and Path(weights).is_file():
        weights_id = f"{weights}#sha256={file_sha256(weights)}"
    run_key = make_run_key({"arch": arch, "dataset": dataset, "input_size": size, "width": width, "subset": subset,
                            "weights": weights_id, "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
                            "weight_decay": cfg.weight_decay, "seed": cfg.seed, "precision": cfg.precision,
                            "amp": cfg.amp})
    # --epochs 0 takes the start weights as they are (e.g. torchvision's ImageNet weights in the paper suite)
    stats = (train(model, train_ds, cfg, ckpt_path=_resume_path(out), progress=progress, run_key=run_key)
             if cfg.epochs else {"wall_s": 0.0, "macs_processed": 0})
    metrics = evaluate(model, test_ds, batch_size=cfg.batch_size, device=cfg.device, precision=cfg.precision)
    meta = {"arch": arch, "dataset": dataset, "num_classes": info.num_classes, "in_channels": info.in_channels,
            "input_size": size, "width": width, "subset": subset, "epochs": cfg.epochs, "lr": cfg.lr,
            "batch_size": cfg.batch_size, "seed": cfg.seed, "top1": metrics["top1"], "top5": metrics["top5"],
            "loss": metrics["loss"], "wall_s": stats["wall_s"], "macs_processed": stats["macs_processed"],
            "init_weights": weights, "precision": cfg.precision}
    torch_save({"state_dict": model.state_dict(), "meta": meta}, out)
    write_json(out.with_name(out.name + ".json"), meta)
    _resume_path(out).unlink(missing_ok=True)
    return meta


# ---- finetune ----------------------------------------------------------------------------------------------
def check_policy_fits(policy: Policy, fp_meta: dict[str, Any], what: str = "the FP checkpoint") -> None:
    """UserError unless the FP model's arch and width are the ones the policy was searched (and costed) for."""
    if policy.arch != fp_meta["arch"]:
        raise UserError(f"the policy is for {policy.arch} but the FP checkpoint is a {fp_meta['arch']}; "
                        "use an FP model of the same arch")
    width = policy.search.width if policy.search is not None else None
    if width is not None and not math.isclose(float(width), float(fp_meta["width"]), rel_tol=1e-9):
        raise UserError(f"the policy was searched for {policy.arch} at width {width:g} but {what} has width "
                        f"{fp_meta['width']:g} (its BitOPs would not be the deployed model's); use an FP model of "
                        f"width {width:g} or search again with --width {fp_meta['width']:g}")


def quantized_model(policy: Policy, fp_meta: dict[str, Any], fp_state: dict[str, Any] | None = None, *,
                    fp_path: Path | str | None = None) -> nn.Module:
    """The target-geometry model of the FP checkpoint (its weights when given) under the policy.

    UserError when the policy does not fit the FP model (arch, width, layers) or the state dict does not fit
    the geometry the meta names (``fp_path`` names the file in the message)."""
    from mpqbench.quant import quantize_model

    what = f"FP checkpoint {fp_path}" if fp_path is not None else "the FP checkpoint"
    check_policy_fits(policy, fp_meta, what)
    model = _model_from_meta(fp_meta)
    if fp_state is not None:
        check_state_dict(model, fp_state, what,
                         f"its meta says {_describe(fp_meta)}; regenerate it with `mpqbench pretrain`")
        model.load_state_dict(fp_state)
    policy.validate_for(model)
    return quantize_model(model, policy.bits())


def policy_bits(policy: Policy) -> dict[str, list[int]]:
    """``{layer: [w, a]}`` of every layer the policy quantizes (fixed ones included), as stored in QAT metas."""
    return {name: [w, a] for name, (w, a) in sorted(policy.bits().items())}


def deployed_cost(policy: Policy, fp_meta: dict[str, Any]):
    """The policy's :class:`~mpqbench.policy.Achieved` cost on the deployed model: the FP checkpoint's geometry
    (arch, width, input size, classes, channels) at the policy's bits (fixed layers W8A8 unless it says)."""
    from mpqbench.cost import arch_cost, summarize
    from mpqbench.policy import Achieved

    cost = arch_cost(fp_meta["arch"], input_size=fp_meta["input_size"], num_classes=fp_meta["num_classes"],
                     in_channels=fp_meta["in_channels"], width=fp_meta["width"])
    fixed = {n: ((policy.fixed[n].w, policy.fixed[n].a) if n in policy.fixed else FIXED_BITS) for n in cost.fixed}
    s = summarize(cost, policy.bits(include_fixed=False), fixed)
    budget = policy.budget.bitops_g
    return Achieved(bitops_g_all=s.bitops_g_all, bitops_g_searchable=s.bitops_g_searchable, size_mb=s.size_mb,
                    avg_w_bits=s.avg_w_bits, avg_a_bits=s.avg_a_bits,
                    budget_used=s.bitops_g_searchable / budget if budget > 0 else None)


def calibrate(model: nn.Module, ds, *, batch_size: int, seed: int, device: torch.device | str = "cpu") -> None:
    """Initialise every LSQ step from one training batch (no parameter or BN-statistics update)."""
    x, _ = next(iter(make_loader(ds, batch_size=batch_size, shuffle=True, seed=seed)))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(x.to(next(model.parameters()).device))
    model.train(was_training)


def finetune(*, policy_path: Path, fp_path: Path, dataset: str, data_root: str | None, subset: int | None,
             cfg: TrainConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """QAT of the FP target model under the policy (LSQ, stem/classifier W8A8); write ``out``.

    Every input is checked before any work (outputs writable, policy, FP checkpoint's meta, state dict and
    geometry against the policy and the dataset, a readable resume file). The resume checkpoint
    ``out``.resume is keyed by a hash of everything that determines the result (the policy's content, the FP
    file's bytes, dataset, subset, epochs, lr, batch size, weight decay, seed, precision): one of another
    run is discarded with a warning and the fine-tune starts clean. ``out``'s meta keeps the policy's bits
    and hash, which ``evaluate`` checks against the policy it is given."""
    out = Path(out)
    for path in (out, _resume_path(out)):
        check_writable(path, "--out")
    if subset is not None and subset < 1:
        raise UserError(f"--subset {subset} must be >= 1 (leave it out for the whole training split)")
    if cfg.epochs < 1:
        raise UserError(f"a fine-tune needs --epochs >= 1, got {cfg.epochs}")
    policy = Policy.load(policy_path)
    fp = load_checkpoint(fp_path, "FP checkpoint")
    fp_meta = check_fp_meta(fp["meta"], fp_path)
    if fp_meta["dataset"] != dataset:
        raise UserError(f"the FP checkpoint was trained on {fp_meta['dataset']}, not {dataset}; "
                        "fine-tune from the FP model of the target dataset")
    _check_classes(fp_meta, fp_path, dataset, data_root)
    model = quantized_model(policy, fp_meta, fp["state_dict"], fp_path=fp_path)
    if _resume_path(out).exists():
        read_resume(_resume_path(out))  # an unreadable one is a user error now, not after loading the data
    policy_sha = json_sha256(policy.model_dump(mode="json"))
    fp_sha = file_sha256(fp_path)
    run_key = make_run_key({"policy_sha256": policy_sha, "fp_sha256": fp_sha, "dataset": dataset, "subset": subset,
                            "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
                            "weight_decay": cfg.weight_decay, "seed": cfg.seed, "precision": cfg.precision,
                            "amp": cfg.amp, "momentum": cfg.momentum, "label_smoothing": cfg.label_smoothing,
                            "augment": cfg.augment})
    train_ds = _train_split(dataset, data_root, fp_meta["input_size"], subset, cfg.seed)
    calibrate(model, train_ds, batch_size=cfg.batch_size, seed=cfg.seed)
    stats = train(model, train_ds, cfg, ckpt_path=_resume_path(out), progress=progress, run_key=run_key)
    meta = {"policy": str(policy_path), "fp": str(fp_path), "dataset": dataset, "subset": subset,
            "arch": policy.arch, "policy_sha256": policy_sha, "policy_bits": policy_bits(policy), "fp_sha256": fp_sha,
            "run_key": run_key["sha256"],
            "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
            "weight_decay": cfg.weight_decay, "precision": cfg.precision, "wall_s": stats["wall_s"],
            "macs_processed": stats["macs_processed"],
            "final_train_loss": stats.get("final_train_loss"), "fp_meta": fp_meta}
    torch_save({"state_dict": model.state_dict(), "meta": meta}, out)
    _resume_path(out).unlink(missing_ok=True)
    return meta


def _bits_text(bits: Any) -> str:
    try:
        w, a = bits
        return f"W{w}A{a}"
    except (TypeError, ValueError):
        return repr(bits)


def _check_ckpt_policy(ft: dict[str, Any], policy: Policy, ckpt_path: Path, policy_path: Path) -> None:
    """UserError when the fine-tuned checkpoint's meta records another arch or other bits than ``policy``."""
    fix = "evaluate it with the policy it was fine-tuned with, or fine-tune again with this policy"
    if "arch" in ft and ft["arch"] != policy.arch:
        raise UserError(f"{ckpt_path} is a fine-tuned {ft['arch']}, the policy {policy_path} is for {policy.arch}; {fix}")
    saved = ft.get("policy_bits")
    if saved is None:
        return  # a fine-tune from before the bits were recorded: its state dict is still checked
    want = policy_bits(policy)
    if not isinstance(saved, dict):
        raise UserError(f"{ckpt_path} has malformed meta.policy_bits; fine-tune it again with `mpqbench finetune`")
    for name in sorted(set(saved) | set(want)):
        have, need = saved.get(name), want.get(name)
        if have is None or need is None or list(have) != list(need):
            raise UserError(f"{ckpt_path} was fine-tuned with {_bits_text(have) if have is not None else 'no bits'} "
                            f"at layer {name}, the policy {policy_path} has "
                            f"{_bits_text(need) if need is not None else 'no such layer'}; {fix}")


# ---- evaluate → run record ------------------------------------------------------------------------------------
def evaluate_run(*, ckpt_path: Path, policy_path: Path, fp_path: Path, dataset: str, data_root: str | None,
                 suite: str, out: Path, device: str = "auto", batch_size: int = EVAL_BATCH_SIZE,
                 precision: str = "fp32") -> dict[str, Any]:
    """Evaluate the fine-tuned model on the target test split and write its run record.

    ``precision``: "fp32" or "bf16" (the forward under bf16 autocast); the record's provenance keeps it and
    the fine-tune's (``{"finetune": ..., "evaluate": ...}``; fine-tunes before the setting existed: fp32).

    Checked before any work: ``out`` writable; the FP checkpoint's meta, state dict, dataset, classes and
    width against the policy; the fine-tuned checkpoint against the policy (the bits its meta records —
    fine-tunes that predate them: its state dict only). The record's ``achieved`` cost is recomputed on the
    deployed model (the FP checkpoint's geometry at the policy's bits), not copied from the policy."""
    out = Path(out)
    check_writable(out, "--out")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be >= 1")
    policy = Policy.load(policy_path)
    if policy.search is None or policy.achieved is None:
        raise UserError(f"{policy_path} has no search/achieved section; it was not written by `mpqbench search`")
    fp = load_checkpoint(fp_path, "FP checkpoint")
    fp_meta = check_fp_meta(fp["meta"], fp_path, needs=("top1",))
    if fp_meta["dataset"] != dataset:
        raise UserError(f"the FP checkpoint {fp_path} was trained on {fp_meta['dataset']}, not {dataset}; "
                        "evaluate with the FP model of the target dataset")
    _check_classes(fp_meta, fp_path, dataset, data_root)
    check_policy_fits(policy, fp_meta, f"FP checkpoint {fp_path}")
    fp_model(fp, fp_path)  # its state dict fits the geometry its meta names
    ckpt = load_checkpoint(ckpt_path, "fine-tuned checkpoint")
    ft = ckpt["meta"]
    if not isinstance(ft, dict):
        raise UserError(f"{ckpt_path} has no meta dict; fine-tune it again with `mpqbench finetune`")
    _check_ckpt_policy(ft, policy, ckpt_path, policy_path)
    model = quantized_model(policy, fp_meta)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError):
        raise UserError(f"{ckpt_path} does not match the policy {policy_path}; fine-tune it again with this policy") from None
    lacking = [k for k in ("epochs", "lr", "batch_size", "subset", "seed", "weight_decay", "wall_s", "macs_processed")
               if k not in ft]
    if lacking:
        raise UserError(f"{ckpt_path} lacks meta {', '.join(lacking)}; it was not written by `mpqbench finetune` — "
                        "fine-tune again")
    achieved = deployed_cost(policy, fp_meta)
    test_ds = load_split(dataset, "test", root=data_root, input_size=fp_meta["input_size"])
    metrics = evaluate(model, test_ds, batch_size=batch_size, device=device, precision=precision)
    base_method = policy.search.hparams.get("method", policy.method)
    resolved = {
        "suite": suite, "method": policy.method, "base_method": base_method, "arch": policy.arch,
        "proxy": policy.search.proxy, "proxy_subset": policy.search.proxy_subset, "target": dataset, "budget": policy.budget.name, "seed": policy.search.seed,
        "candidates": policy.candidates.model_dump(), "search_hparams": policy.search.hparams,
        "finetune": {k: ft[k] for k in ("epochs", "lr", "batch_size", "subset", "seed", "weight_decay")},
        "precision": {"search": policy.search.precision or "fp32", "finetune": ft.get("precision", "fp32"),
                      "evaluate": precision},
        "fp": {k: fp_meta.get(k) for k in ("arch", "dataset", "input_size", "width", "epochs", "subset", "seed")},
    }
    record = RunRecord(
        run_id=run_id(resolved), suite=suite, method=policy.method, base_method=base_method, arch=policy.arch,
        proxy=policy.search.proxy, target=dataset, seed=policy.search.seed, budget=policy.budget,
        layers=policy.layers, fixed=policy.fixed, achieved=achieved, search=policy.search,
        metrics=metrics, fp_top1=fp_meta["top1"],
        finetune={"epochs": ft["epochs"], "wall_s": ft["wall_s"], "macs_processed": ft["macs_processed"],
                  "lr": ft["lr"], "batch_size": ft["batch_size"], "subset": ft["subset"]},
        env=env_info(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")),
        git=git_info(), status="ok", created_utc=utc_now(),
        provenance={"policy_created_utc": policy.provenance.get("created_utc"),
                    "policy_git_commit": policy.provenance.get("git_commit"),
                    "precision": {"finetune": ft.get("precision", "fp32"), "evaluate": precision},
                    "resolved": resolved,
                    "record_path": Layout(suite=suite, target=dataset).record_in_results.format(
                        arch=policy.arch, budget=policy.budget.name, method=policy.method, proxy=policy.search.proxy,
                        seed=policy.search.seed)},
    )
    data = record.model_dump(mode="json")
    write_json(out, data)
    return data


# ---- aggregate ---------------------------------------------------------------------------------------------
def _load_records(runs_dir: Path) -> list[dict[str, Any]]:
    """Every record under ``runs_dir`` through the one loader the app uses too (:func:`mpqbench.board.load_records`,
    strict: a malformed, non-finite or duplicate record stops the aggregate with one line naming each file)."""
    from mpqbench import board as lb

    records, _ = lb.load_records(runs_dir, strict=True)
    if not records:
        raise UserError(f"no run records under {runs_dir}; run the workflow first (`snakemake --cores 2 all`)")
    return [{k: v for k, v in rec.items() if k != "_path"} for rec in records]


def aggregate(*, runs_dir: Path, out_dir: Path, figures: bool = True, bench_dir: Path | None = None,
              snakemake_log_dir: Path | None = Path(".snakemake/log"),
              job_log_dir: Path | None = None) -> dict[str, Any]:
    """results/leaderboard.csv and results/summary.json (and, unless ``figures`` is False,
    results/figures/*.png) from the run records.

    The suite's cost: with ``bench_dir`` (the workflow's ``<log_dir>/benchmarks/<suite>``), one row per job
    of the run goes to ``out_dir/jobs.tsv`` (the aggregate and figures jobs themselves are left out: their
    benchmark files are written after this runs) and ``summary.json`` gets ``suite_cost`` (job time,
    elapsed wall time, per rule). Without ``bench_dir`` an existing ``out_dir/jobs.tsv`` is read back, so
    re-aggregating committed results gives the same summary. With ``job_log_dir`` (``<log_dir>/<suite>``) a
    job's CPU seconds and peak RSS come from the usage line its log ends with (:mod:`mpqbench.jobserver`)."""
    from mpqbench import jobs
    from mpqbench import board as lb

    check_writable_dir(out_dir, "--out-dir")
    for name in (AGGREGATE_FILES[k] for k in ("leaderboard", "summary", "jobs")):
        check_writable(Path(out_dir) / name, "--out-dir file")
    if figures:
        check_writable_dir(Path(out_dir) / "figures", "--out-dir figures folder")
    records = _load_records(runs_dir)
    df = lb.records_to_frame(records)
    lb.write_leaderboard_csv(df, out_dir / AGGREGATE_FILES["leaderboard"])
    summary = lb.summary(df)
    jobs_path = out_dir / AGGREGATE_FILES["jobs"]
    frame = None
    if bench_dir is not None:
        if not Path(bench_dir).is_dir():
            raise UserError(f"--bench-dir {bench_dir} does not exist; run the workflow first or leave the option out")
        frame = jobs.collect_jobs(bench_dir, snakemake_log_dir=snakemake_log_dir, job_log_dir=job_log_dir)
        frame = frame[~frame["rule"].isin(["aggregate", "figures"])].reset_index(drop=True)
        jobs.write_jobs_tsv(frame, jobs_path)
    elif jobs_path.is_file():
        frame = jobs.read_jobs_tsv(jobs_path)
    if frame is not None:
        summary["suite_cost"] = jobs.suite_cost(frame)
    write_json(out_dir / AGGREGATE_FILES["summary"], summary)
    if figures:
        make_figures(runs_dir=runs_dir, out_dir=out_dir / "figures", records=records)
    return {"records": len(records), "jobs": None if frame is None else len(frame)}


def make_figures(*, runs_dir: Path, out_dir: Path, records: list[dict[str, Any]] | None = None) -> list[Path]:
    """results/figures/*.png (Pareto, accuracy vs search cost, per-layer policy heatmaps) from the records."""
    from mpqbench import board as lb
    from mpqbench.figures import write_figures

    check_writable_dir(out_dir, "--out-dir")
    records = _load_records(runs_dir) if records is None else records
    return write_figures(lb.records_to_frame(records), records, out_dir)
