"""The pipeline stages behind the CLI: pretrain, finetune, evaluate (→ run record), aggregate.

Each stage reads and writes files only through checked loaders and atomic writers, so every stage can
be re-run after a kill: training resumes from its per-epoch checkpoint, and a stage's output appears
only when the stage has finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpqbench.data import dataset_info, load_split, make_loader, subset as take_subset
from mpqbench.errors import UserError
from mpqbench.models import get_model
from mpqbench.policy import Policy
from mpqbench.records import RunRecord, env_info, git_info, record_relpath, run_id, utc_now
from mpqbench.train import TrainConfig, evaluate, train
from mpqbench.utils import seed_everything, torch_save, write_json


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


def _model_from_meta(meta: dict[str, Any]) -> nn.Module:
    return get_model(meta["arch"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                     input_size=meta["input_size"], width=meta["width"])


def _train_split(dataset: str, data_root: str | None, size: int, subset: int | None, seed: int):
    ds = load_split(dataset, "train", root=data_root, input_size=size)
    return take_subset(ds, count=subset, seed=seed) if subset else ds


# ---- pretrain ----------------------------------------------------------------------------------------------
def pretrain(*, arch: str, dataset: str, data_root: str | None, input_size: int | None, width: float,
             subset: int | None, cfg: TrainConfig, out: Path, progress: bool = True,
             weights: str | None = None) -> dict[str, Any]:
    """Train the FP model of ``arch`` on ``dataset``; write ``out`` ({state_dict, meta}) and ``out``.json."""
    info = dataset_info(dataset, root=data_root)
    size = input_size or info.native_size
    seed_everything(cfg.seed)  # the random init is part of the run: same seed, same FP model
    model = get_model(arch, num_classes=info.num_classes, in_channels=info.in_channels, input_size=size,
                      width=width, weights=weights)
    train_ds = _train_split(dataset, data_root, size, subset, cfg.seed)
    test_ds = load_split(dataset, "test", root=data_root, input_size=size)
    # --epochs 0 takes the start weights as they are (e.g. torchvision's ImageNet weights in the paper suite)
    stats = (train(model, train_ds, cfg, ckpt_path=_resume_path(out), progress=progress) if cfg.epochs
             else {"wall_s": 0.0, "macs_processed": 0})
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
def quantized_model(policy: Policy, fp_meta: dict[str, Any], fp_state: dict[str, Any] | None = None) -> nn.Module:
    """The target-geometry model of the FP checkpoint (its weights when given) under the policy."""
    from mpqbench.quant import quantize_model

    if policy.arch != fp_meta["arch"]:
        raise UserError(f"the policy is for {policy.arch} but the FP checkpoint is a {fp_meta['arch']}; "
                        "use an FP model of the same arch")
    model = _model_from_meta(fp_meta)
    if fp_state is not None:
        model.load_state_dict(fp_state)
    policy.validate_for(model)
    return quantize_model(model, policy.bits())


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
    """QAT of the FP target model under the policy (LSQ, stem/classifier W8A8); write ``out``."""
    policy = Policy.load(policy_path)
    fp = load_checkpoint(fp_path, "FP checkpoint")
    fp_meta = fp["meta"]
    if fp_meta["dataset"] != dataset:
        raise UserError(f"the FP checkpoint was trained on {fp_meta['dataset']}, not {dataset}; "
                        "fine-tune from the FP model of the target dataset")
    model = quantized_model(policy, fp_meta, fp["state_dict"])
    train_ds = _train_split(dataset, data_root, fp_meta["input_size"], subset, cfg.seed)
    calibrate(model, train_ds, batch_size=cfg.batch_size, seed=cfg.seed)
    stats = train(model, train_ds, cfg, ckpt_path=_resume_path(out), progress=progress)
    meta = {"policy": str(policy_path), "fp": str(fp_path), "dataset": dataset, "subset": subset,
            "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
            "weight_decay": cfg.weight_decay, "precision": cfg.precision, "wall_s": stats["wall_s"],
            "macs_processed": stats["macs_processed"],
            "final_train_loss": stats.get("final_train_loss"), "fp_meta": fp_meta}
    torch_save({"state_dict": model.state_dict(), "meta": meta}, out)
    _resume_path(out).unlink(missing_ok=True)
    return meta


# ---- evaluate → run record ------------------------------------------------------------------------------------
def evaluate_run(*, ckpt_path: Path, policy_path: Path, fp_path: Path, dataset: str, data_root: str | None,
                 suite: str, out: Path, device: str = "auto", batch_size: int = 512,
                 precision: str = "fp32") -> dict[str, Any]:
    """Evaluate the fine-tuned model on the target test split and write its run record.

    ``precision``: "fp32" or "bf16" (the forward under bf16 autocast); the record's provenance keeps it and
    the fine-tune's (``{"finetune": ..., "evaluate": ...}``; fine-tunes before the setting existed: fp32)."""
    policy = Policy.load(policy_path)
    if policy.search is None or policy.achieved is None:
        raise UserError(f"{policy_path} has no search/achieved section; it was not written by `mpqbench search`")
    fp_meta = load_checkpoint(fp_path, "FP checkpoint")["meta"]
    ckpt = load_checkpoint(ckpt_path, "fine-tuned checkpoint")
    model = quantized_model(policy, fp_meta)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError:
        raise UserError(f"{ckpt_path} does not match the policy {policy_path}; fine-tune it again with this policy") from None
    test_ds = load_split(dataset, "test", root=data_root, input_size=fp_meta["input_size"])
    metrics = evaluate(model, test_ds, batch_size=batch_size, device=device, precision=precision)
    ft = ckpt["meta"]
    base_method = policy.search.hparams.get("method", policy.method)
    resolved = {
        "suite": suite, "method": policy.method, "base_method": base_method, "arch": policy.arch,
        "proxy": policy.search.proxy, "proxy_subset": policy.search.proxy_subset, "target": dataset, "budget": policy.budget.name, "seed": policy.search.seed,
        "candidates": policy.candidates.model_dump(), "search_hparams": policy.search.hparams,
        "finetune": {k: ft[k] for k in ("epochs", "lr", "batch_size", "subset", "seed", "weight_decay")},
        "precision": {"search": policy.search.precision or "fp32", "finetune": ft.get("precision", "fp32"),
                      "evaluate": precision},
        "fp": {k: fp_meta[k] for k in ("arch", "dataset", "input_size", "width", "epochs", "subset", "seed")},
    }
    record = RunRecord(
        run_id=run_id(resolved), suite=suite, method=policy.method, base_method=base_method, arch=policy.arch,
        proxy=policy.search.proxy, target=dataset, seed=policy.search.seed, budget=policy.budget,
        layers=policy.layers, fixed=policy.fixed, achieved=policy.achieved, search=policy.search,
        metrics=metrics, fp_top1=fp_meta["top1"],
        finetune={"epochs": ft["epochs"], "wall_s": ft["wall_s"], "macs_processed": ft["macs_processed"],
                  "lr": ft["lr"], "batch_size": ft["batch_size"], "subset": ft["subset"]},
        env=env_info(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")),
        git=git_info(), status="ok", created_utc=utc_now(),
        provenance={"policy_created_utc": policy.provenance.get("created_utc"),
                    "policy_git_commit": policy.provenance.get("git_commit"),
                    "precision": {"finetune": ft.get("precision", "fp32"), "evaluate": precision},
                    "resolved": resolved,
                    "record_path": str(record_relpath(suite=suite, arch=policy.arch, budget=policy.budget.name,
                                                      method=policy.method, proxy=policy.search.proxy,
                                                      target=dataset, seed=policy.search.seed))},
    )
    data = record.model_dump(mode="json")
    write_json(out, data)
    return data


# ---- aggregate ---------------------------------------------------------------------------------------------
def _load_records(runs_dir: Path) -> list[dict[str, Any]]:
    paths = sorted(runs_dir.rglob("*.json"))
    if not paths:
        raise UserError(f"no run records under {runs_dir}; run the workflow first (`snakemake --cores 2 all`)")
    return [RunRecord.load(p).model_dump(mode="json") for p in paths]


def aggregate(*, runs_dir: Path, out_dir: Path, figures: bool = True, bench_dir: Path | None = None,
              snakemake_log_dir: Path | None = Path(".snakemake/log")) -> dict[str, Any]:
    """results/leaderboard.csv and results/summary.json (and, unless ``figures`` is False,
    results/figures/*.png) from the run records.

    The suite's cost: with ``bench_dir`` (the workflow's ``<log_dir>/benchmarks/<suite>``), one row per job
    of the run goes to ``out_dir/jobs.tsv`` (the aggregate and figures jobs themselves are left out: their
    benchmark files are written after this runs) and ``summary.json`` gets ``suite_cost`` (job time,
    elapsed wall time, per rule). Without ``bench_dir`` an existing ``out_dir/jobs.tsv`` is read back, so
    re-aggregating committed results gives the same summary."""
    from mpqbench import jobs
    from mpqbench import leaderboard as lb

    records = _load_records(runs_dir)
    df = lb.records_to_frame(records)
    lb.write_leaderboard_csv(df, out_dir / "leaderboard.csv")
    summary = lb.summary(df)
    jobs_path = out_dir / "jobs.tsv"
    frame = None
    if bench_dir is not None:
        if not Path(bench_dir).is_dir():
            raise UserError(f"--bench-dir {bench_dir} does not exist; run the workflow first or leave the option out")
        frame = jobs.collect_jobs(bench_dir, snakemake_log_dir=snakemake_log_dir)
        frame = frame[~frame["rule"].isin(["aggregate", "figures"])].reset_index(drop=True)
        jobs.write_jobs_tsv(frame, jobs_path)
    elif jobs_path.is_file():
        frame = jobs.read_jobs_tsv(jobs_path)
    if frame is not None:
        summary["suite_cost"] = jobs.suite_cost(frame)
    write_json(out_dir / "summary.json", summary)
    if figures:
        make_figures(runs_dir=runs_dir, out_dir=out_dir / "figures", records=records)
    return {"records": len(records), "jobs": None if frame is None else len(frame)}


def make_figures(*, runs_dir: Path, out_dir: Path, records: list[dict[str, Any]] | None = None) -> list[Path]:
    """results/figures/*.png (Pareto, accuracy vs search cost, per-layer policy heatmaps) from the records."""
    from mpqbench import leaderboard as lb
    from mpqbench.figures import write_figures

    records = _load_records(runs_dir) if records is None else records
    return write_figures(lb.records_to_frame(records), records, out_dir)
