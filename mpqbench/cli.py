"""``mpqbench`` command line: info, complexity, pretrain, search, finetune, evaluate, aggregate, export, figures.

Every error a user can cause ends in one line ``error: <what is wrong; what to do>`` on stderr and
exit status 2, without a traceback; outputs are written atomically, so a failed command leaves no
partial file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from mpqbench.errors import UserError
from mpqbench.runs import (COMPARE_ENV, DEFAULT_BUDGET_FLOOR, DEFAULT_CONFIGFILE, ROLES, WORKFLOW_CORES, Layout,
                           PRECISIONS, EvaluateRequest, FinetuneRequest, PretrainRequest, SearchRequest, default_of,
                           read_yaml)

EXIT_USAGE = 2
_DEFAULTS = Layout(suite="default", target="")  # the default suite's folders (aggregate, figures)


# ---- helpers -----------------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 2,3,4, got {text!r}") from None
    if not values or any(v < 1 or v > 16 for v in values):
        raise argparse.ArgumentTypeError(f"bit candidates must be integers in 1..16, got {text!r}")
    return values


def _int_at_least(low: int, hint: str = ""):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}{hint}")
        return value

    parse.__name__ = "integer"
    return parse


def _float_above(low: float, *, inclusive: bool = False, high: float | None = None, hint: str = ""):
    """An argparse type: a finite number > ``low`` (>= with ``inclusive``; <= ``high`` when given)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value) and (value >= low if inclusive else value > low) and (high is None or value <= high)
        if not ok:
            where = f"{'>=' if inclusive else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be a number {where}, got {text!r}{hint}")
        return value

    parse.__name__ = "number"
    return parse


def _seed(text: str) -> int:
    from mpqbench.utils import SEED_MAX

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed must be an integer in [0, {SEED_MAX}], got {text!r}")
    return value


_positive = _int_at_least(1)
_epochs = _int_at_least(1, " (a fine-tune trains at least one epoch)")
_pretrain_epochs = _int_at_least(0, " (0 = keep the --weights as they are)")
_above_zero = _float_above(0.0)
_nonnegative = _float_above(0.0, inclusive=True)
_fraction = _float_above(0.0, inclusive=True, high=1.0)


def _label(text: str) -> str:
    """A name that becomes a path component, a Snakemake wildcard and a word of a shell command."""
    from mpqbench.config import check_label

    try:
        return check_label(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _hparam(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = {"true": True, "false": False}.get(raw.lower(), raw)
    return key.strip(), value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--data-root", default=None, help="root folder of datasets that are not system packages")


def _train_args(p: argparse.ArgumentParser, request: type, *, epochs=_epochs) -> None:
    p.add_argument("--epochs", type=epochs, default=default_of(request, "epochs"))
    p.add_argument("--lr", type=_above_zero, default=default_of(request, "lr"))
    p.add_argument("--batch-size", type=_positive, default=default_of(request, "batch_size"))
    p.add_argument("--weight-decay", type=_nonnegative, default=None)
    p.add_argument("--subset", type=_positive, default=None, help="train on a seeded, stratified subset of N images")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    p.add_argument("--precision", choices=PRECISIONS, default=default_of(request, "precision"),
                   help="bf16: the network's forward under bfloat16 autocast on CPU or CUDA (quantizers in fp32)")


def _check_first(args: argparse.Namespace, *outs: tuple[str | None, str],
                 dirs: tuple[tuple[str | None, str], ...] = ()) -> None:
    """What every command checks before any work: the device exists, the outputs can be written."""
    from mpqbench.utils import check_writable, check_writable_dir, resolve_device

    if getattr(args, "device", None) is not None:
        resolve_device(args.device)
    for path, what in outs:
        if path is not None:
            check_writable(path, what)
    for path, what in dirs:
        if path is not None:
            check_writable_dir(path, what)


# ---- commands ----------------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    import mpqbench
    from mpqbench.data import dataset_status
    from mpqbench.models import list_models
    from mpqbench.plugins import discover
    from mpqbench.utils import device_name, resolve_device

    device = resolve_device(args.device)
    info = {
        "mpqbench": mpqbench.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "device": device_name(device), "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(), "archs": list_models(), "methods": discover(),
        "datasets": dataset_status(args.data_root),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key in ("mpqbench", "python", "torch", "device", "cuda", "threads"):
        print(f"{key:9s} {info[key]}")
    print(f"{'archs':9s} {', '.join(info['archs'])}")
    print(f"{'methods':9s} {', '.join(info['methods'])}")
    print("datasets:")
    for d in info["datasets"]:
        state = f"present ({d['where']})" if d["present"] else f"missing — {d['how_to_get']}"
        print(f"  {d['name']:13s} {state}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """The one command that downloads data, and only what it is asked for."""
    from mpqbench.data import dataset_info, load_split

    _check_first(args)
    size = dataset_info(args.dataset, root=args.data_root).native_size
    for split in ("train", "test"):
        load_split(args.dataset, split, root=args.data_root, input_size=size, download=True)
    print(f"{args.dataset}: present (train and test)")
    return 0


def cmd_complexity(args: argparse.Namespace) -> int:
    from mpqbench.cost import complexity_report
    from mpqbench.policy import Policy

    policy: Any = args.policy
    if args.policy.endswith(".json") or Path(args.policy).is_file():
        p = Policy.load(args.policy)
        policy = p.bits()
    report = complexity_report(args.arch, input_size=args.input_size, num_classes=args.num_classes,
                               in_channels=args.in_channels, width=args.width, policy=policy)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    t = report["totals"]
    print(f"{args.arch} @ {args.input_size}px, {args.num_classes} classes, policy {args.policy}")
    print(f"{'layer':28s} {'type':8s} {'MACs':>12s} {'W':>3s} {'A':>3s} {'GBitOPs':>9s}")
    for row in report["layers"]:
        mark = "" if row["searchable"] else " (fixed)"
        print(f"{row['name'] + mark:28s} {row['type']:8s} {row['macs']:12d} {row['w']:3d} {row['a']:3d} {row['bitops_g']:9.4f}")
    print(f"MACs: {t['macs_g_all']:.4f} G all, {t['macs_g_searchable']:.4f} G searchable")
    print(f"BitOPs: {t['bitops_g_all']:.4f} G all layers, {t['bitops_g_searchable']:.4f} G searchable only")
    print(f"size {t['size_mb']:.4f} MB, avg bits W{t['avg_w_bits']:.3f} A{t['avg_a_bits']:.3f}")
    return 0


def _train_config(args: argparse.Namespace, *, weight_decay: float):
    from mpqbench.train import TrainConfig

    return TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                       device=args.device, amp=not args.no_amp, precision=args.precision,
                       weight_decay=args.weight_decay if args.weight_decay is not None else weight_decay)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from mpqbench.pipeline import pretrain

    _check_first(args, (args.out, "--out"), (args.out + ".json", "--out (its .json)"),
                 (args.out + ".resume", "--out (its .resume)"))
    if args.epochs == 0 and args.weights is None:
        raise UserError("--epochs 0 keeps the start weights as they are, and without --weights they are random; "
                        "pass --weights FILE|torchvision or --epochs 1 or more")

    meta = pretrain(arch=args.arch, dataset=args.dataset, data_root=args.data_root, input_size=args.input_size,
                    width=args.width, subset=args.subset, cfg=_train_config(args, weight_decay=5e-4),
                    out=Path(args.out), progress=not args.no_progress, weights=args.weights)
    print(f"FP {args.arch} on {args.dataset}: top-1 {meta['top1']:.2f}% ({meta['wall_s']:.0f} s) -> {args.out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from mpqbench.plugins import discover
    from mpqbench.search.run import run_search

    _check_first(args, (args.out, "--out"), dirs=((args.work_dir, "--work-dir"),))
    discover()
    if args.teacher is not None:
        from mpqbench.search import get_method

        if not Path(args.teacher).is_file():
            raise UserError(f"--teacher {args.teacher} does not exist; pretrain it with `mpqbench pretrain --dataset "
                            f"{args.proxy} ...` or leave --teacher out")

        method_cls = get_method(args.method)
        if method_cls.needs_teacher:
            from mpqbench.pipeline import fp_model, load_checkpoint

            ckpt = load_checkpoint(Path(args.teacher), "FP teacher")
            fp_model(ckpt, Path(args.teacher), "FP teacher")
            # a proxy teacher is trained on the proxy; a target FP start model on the target
            want = args.target if method_cls.teacher_from == "target" else args.proxy
            have = ckpt["meta"].get("dataset")
            if have != want:
                raise UserError(f"--teacher {args.teacher} was trained on {have!r}; {args.method} needs the FP model "
                                f"trained on the {method_cls.teacher_from} {want!r} (`mpqbench pretrain --dataset {want} ...`)")

    req = SearchRequest(
        method=args.method, label=args.label, arch=args.arch, proxy=args.proxy, target=args.target,
        budget=args.budget, seed=args.seed, proxy_label=args.proxy_label, proxy_subset=args.proxy_subset,
        proxy_input_size=args.proxy_input_size, target_input_size=args.target_input_size, width=args.width,
        w_candidates=args.w_candidates, a_candidates=args.a_candidates, hparams=dict(args.hp or []),
        epochs=args.epochs, batch_size=args.batch_size, teacher=args.teacher, data_root=args.data_root,
        device=args.device, progress=not args.no_progress, work_dir=args.work_dir, budget_floor=args.budget_floor,
        precision=args.precision, length=args.length, curve=args.curve, role=args.role, out=args.out,
    )
    policy = run_search(req, Path(args.out))
    a, s = policy.achieved, policy.search
    print(f"{policy.method}: {a.bitops_g_searchable:.4f}/{policy.budget.bitops_g:.4f} GBitOPs (searchable), "
          f"avg W{a.avg_w_bits:.2f}A{a.avg_a_bits:.2f}, search {s.wall_s:.1f} s, {s.macs_processed:.3g} MACs"
          f"{', repaired' if s.repaired else ''} -> {args.out}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from mpqbench.pipeline import finetune

    _check_first(args, (args.out, "--out"), (args.out + ".resume", "--out (its .resume)"))

    meta = finetune(policy_path=Path(args.policy), fp_path=Path(args.fp), dataset=args.dataset,
                    data_root=args.data_root, subset=args.subset, cfg=_train_config(args, weight_decay=1e-4),
                    out=Path(args.out), progress=not args.no_progress)
    print(f"QAT fine-tune done in {meta['wall_s']:.0f} s -> {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mpqbench.pipeline import evaluate_run

    _check_first(args, (args.out, "--out"))

    record = evaluate_run(ckpt_path=Path(args.ckpt), policy_path=Path(args.policy), fp_path=Path(args.fp),
                          dataset=args.dataset, data_root=args.data_root, suite=args.suite, out=Path(args.out),
                          device=args.device, batch_size=args.batch_size, precision=args.precision)
    m = record["metrics"]
    print(f"{record['method']} {record['arch']} {record['budget']['name']} seed {record['seed']}: "
          f"top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}% -> {args.out}")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from mpqbench.pipeline import make_figures

    _check_first(args, dirs=((args.out_dir, "--out-dir"),))

    paths = make_figures(runs_dir=Path(args.runs), out_dir=Path(args.out_dir))
    print(f"{len(paths)} figures -> {args.out_dir}")
    return 0


def cmd_aggregate(args: argparse.Namespace) -> int:
    from mpqbench.pipeline import aggregate

    _check_first(args, dirs=((args.out_dir, "--out-dir"),))

    out = aggregate(runs_dir=Path(args.runs), out_dir=Path(args.out_dir), figures=not args.no_figures,
                    bench_dir=Path(args.bench_dir) if args.bench_dir else None,
                    job_log_dir=Path(args.job_logs) if args.job_logs else None)
    print(f"aggregated {out['records']} records -> {args.out_dir}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mpqbench.board.export import EXPORT_KINDS, write_export

    out_dir = args.out_dir or args.results
    _check_first(args, dirs=((out_dir, "--out-dir"),))
    if not Path(args.results).is_dir():
        raise UserError(f"--results {args.results} is not a folder; pass a results folder (leaderboard.csv, "
                        "summary.json, runs/)")
    paths = write_export(args.results, out_dir, kinds=EXPORT_KINDS, html=not args.no_html)
    print(f"exported {', '.join(p.name for p in paths)} -> {out_dir}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mpqbench.board.compare import compare_with_git, format_comparison

    if not Path(args.runs).is_dir():
        raise UserError(f"--runs {args.runs} is not a folder; pass a results folder's runs/ (records)")
    comparison = compare_with_git(args.runs, args.against)
    print("\n".join(format_comparison(comparison)))
    return 1 if args.strict and not comparison.all_identical else 0


def _suite_runs_dir(configfile: str) -> str:
    """The records folder of the suite in ``configfile`` (its ``results_dir``/runs)."""
    import yaml

    from mpqbench.config import load_suite

    path = Path(configfile)
    if not path.is_file():
        raise UserError(f"--configfile {configfile} does not exist; pass a suite file such as "
                        f"{DEFAULT_CONFIGFILE} or config/smoke.yaml")
    try:
        suite = load_suite(read_yaml(path.read_text()), source=str(path))
    except yaml.YAMLError as exc:
        raise UserError(f"{configfile} is not valid YAML ({type(exc).__name__}); fix the suite file") from None
    return Layout.of(suite).runs_dir


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Re-run a suite from scratch (every job, ``--forceall``), then compare its records with git HEAD's."""
    import os
    import shlex
    import subprocess
    import time

    from mpqbench.board.compare import compare_with_git, format_comparison

    if not Path("Snakefile").is_file():
        raise UserError("no Snakefile here; run `mpqbench reproduce` in the mpqbench checkout")
    runs_dir = _suite_runs_dir(args.configfile)
    argv = ["snakemake", "--cores", str(args.cores), "--forceall"]
    if args.configfile != DEFAULT_CONFIGFILE:
        argv += ["--configfile", args.configfile]
    argv += ["--", "all"]
    print(f"reproduce: {shlex.join(argv)}", flush=True)
    start = time.monotonic()
    env = {**os.environ, COMPARE_ENV: "0"}  # this command prints the comparison itself, once
    try:
        rc = subprocess.run(argv, env=env, check=False).returncode
    except FileNotFoundError:
        raise UserError("snakemake is not installed; `pip install -e '.[workflow]'` (scripts/setup.sh does)") from None
    minutes = (time.monotonic() - start) / 60
    if rc != 0:
        print(f"reproduce: the workflow failed after {minutes:.1f} min (exit {rc}); its log names the failed job; "
              "re-run the same command to continue", file=sys.stderr)
        return rc
    print(f"reproduce: the suite ran from scratch in {minutes:.1f} min")
    print("\n".join(format_comparison(compare_with_git(runs_dir, "HEAD"))))
    return 0


# ---- parser ------------------------------------------------------------------------------------------------
def _registered(kind: str) -> list[str]:
    """The registered names of a kind (``method``, ``arch``, ``dataset``): imported only when help is shown."""
    if kind == "method":
        from mpqbench.plugins import discover

        return discover()
    if kind == "arch":
        from mpqbench.models import list_models

        return list_models()
    from mpqbench.data.registry import DATASETS

    return DATASETS.names()


# arguments whose valid values are a registry's names; `--help` lists them (filled in when help is formatted)
_REGISTRY_ARGS = {"method": "method", "arch": "arch", "dataset": "dataset", "proxy": "dataset", "target": "dataset"}


class _OneLineParser(argparse.ArgumentParser):
    """Command-syntax errors end like every other user error: one line, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)

    def format_help(self) -> str:
        for action in self._actions:
            kind = _REGISTRY_ARGS.get(action.dest)
            if kind and not getattr(action, "_lists_registry", False):
                names = ", ".join(_registered(kind))
                action.help = f"{action.help}; one of: {names}" if action.help else f"one of: {names}"
                action._lists_registry = True  # type: ignore[attr-defined]
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="mpqbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_OneLineParser)

    p = sub.add_parser("info", help="versions, device, archs, methods, and which datasets are present")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("download", help="download a dataset that torchvision can fetch (the only command that downloads)")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("complexity", help="MACs, BitOPs and size of an arch under a policy")
    p.add_argument("--arch", required=True)
    p.add_argument("--input-size", type=_positive, default=224)
    p.add_argument("--num-classes", type=_positive, default=1000)
    p.add_argument("--in-channels", type=_positive, default=3)
    p.add_argument("--width", type=_above_zero, default=1.0)
    p.add_argument("--policy", default="w8a8", help="uniform name such as w4a4, or a policy JSON file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_complexity)

    p = sub.add_parser("pretrain", help="train the full-precision model (target start model or proxy teacher)")
    _common(p)
    p.add_argument("--arch", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--input-size", type=_positive, default=None, help="default: the dataset's native size")
    p.add_argument("--width", type=_above_zero, default=1.0)
    p.add_argument("--weights", default=None, help="start from a local state-dict file or 'torchvision' (hub cache only)")
    _train_args(p, PretrainRequest, epochs=_pretrain_epochs)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("search", help="search a bit-width policy on a proxy dataset")
    _common(p)
    p.add_argument("--method", required=True)
    p.add_argument("--label", type=_label, default=None, help="name recorded for this variant (default: the method)")
    p.add_argument("--arch", required=True)
    p.add_argument("--proxy", required=True, help="dataset searched on")
    p.add_argument("--proxy-label", type=_label, default=None, help="recorded proxy name (default: dataset, '-subset' if subset)")
    p.add_argument("--proxy-subset", type=_positive, default=None)
    p.add_argument("--proxy-input-size", type=_positive, default=None)
    p.add_argument("--target", required=True, help="dataset deployed on (the budget is resolved on its geometry)")
    p.add_argument("--target-input-size", type=_positive, default=None)
    p.add_argument("--budget", required=True, help="uniform reference such as w3a3 or w2.5a2.5")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--width", type=_above_zero, default=1.0)
    p.add_argument("--w-candidates", type=_int_list, default=default_of(SearchRequest, "w_candidates"))
    p.add_argument("--a-candidates", type=_int_list, default=default_of(SearchRequest, "a_candidates"))
    p.add_argument("--hp", type=_hparam, action="append", metavar="KEY=VALUE", help="method hyper-parameter")
    p.add_argument("--epochs", type=_above_zero, default=None, help="search epochs, for methods that train (same as --hp epochs=)")
    p.add_argument("--batch-size", type=_positive, default=None, help="search batch size, for methods that have one")
    p.add_argument("--teacher", default=None, help="the FP model a method reads: pretrained on the proxy (GMPQ, HAWQ), or "
                   "the target FP start model for methods with teacher_from='target' (hawq-target, SEAM, LIMPQ, ...)")
    p.add_argument("--work-dir", default=None, help="folder for a resumable search checkpoint")
    p.add_argument("--budget-floor", type=_fraction, default=DEFAULT_BUDGET_FLOOR,
                   help=f"budget window [floor, 1] x budget that methods aim at (default {DEFAULT_BUDGET_FLOOR})")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="forward passes of the search in fp32 or under bf16 autocast (quantizers stay fp32)")
    p.add_argument("--length", type=_above_zero, default=None,
                   help="recorded: this search's length as a multiple of the suite's default (curves)")
    p.add_argument("--role", choices=ROLES, default=None,
                   help="recorded: the entry's leaderboard role (default: the method's; 'ablation' for a variant of "
                   "the proposed method)")
    p.add_argument("--curve", type=_label, default=None,
                   help="recorded: label of the default-length entry whose accuracy-vs-cost curve this run is on")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("finetune", help="QAT fine-tune the FP model on the target with a fixed policy")
    _common(p)
    p.add_argument("--policy", required=True)
    p.add_argument("--fp", required=True, help="FP checkpoint of the arch trained on the target")
    p.add_argument("--dataset", required=True)
    _train_args(p, FinetuneRequest)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="evaluate a fine-tuned model on the target test split; write a run record")
    _common(p)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--policy", required=True)
    p.add_argument("--fp", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--suite", type=_label, default="adhoc")
    p.add_argument("--batch-size", type=_positive, default=default_of(EvaluateRequest, "batch_size"))
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: the forward under bfloat16 autocast on CPU or CUDA (quantizers in fp32)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("aggregate", help="derive leaderboard.csv, summary.json and figures from run records")
    p.add_argument("--runs", default=_DEFAULTS.runs_dir)
    p.add_argument("--out-dir", default=_DEFAULTS.results_dir)
    p.add_argument("--no-figures", action="store_true", help="only the table and summary (the workflow's "
                   "figures rule draws the figures)")
    p.add_argument("--bench-dir", default=None, help="the workflow's benchmark folder (logs/benchmarks/<suite>): "
                   "write jobs.tsv and the suite's cost into summary.json (default: reuse <out-dir>/jobs.tsv)")
    p.add_argument("--job-logs", default=None, help="the workflow's job log folder (logs/<suite>): each job's CPU "
                   "seconds and peak RSS from the usage line it ends with (default: Snakemake's sampled values)")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("export", help="write the leaderboard as LaTeX/Markdown/CSV tables, their BibTeX, DVC's "
                       "headline metrics and the static leaderboard.html from a results folder")
    p.add_argument("--results", default=_DEFAULTS.results_dir, help="results folder (leaderboard.csv, summary.json)")
    p.add_argument("--out-dir", default=None, help="where to write (default: the results folder)")
    p.add_argument("--no-html", action="store_true", help="leave out leaderboard.html (needs altair and "
                   "vl-convert-python)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compare", help="compare a results folder's run records with the ones committed in git")
    p.add_argument("--runs", default=_DEFAULTS.runs_dir, help="the records folder (a suite's results_dir/runs)")
    p.add_argument("--against", default="HEAD", help="the git revision whose committed records to compare with")
    p.add_argument("--strict", action="store_true", help="exit 1 unless every run is identical to its committed one")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("reproduce", help="re-run a suite from scratch (snakemake --forceall all) and compare its "
                       "records with the committed ones (git HEAD)")
    p.add_argument("--configfile", default=DEFAULT_CONFIGFILE, help=f"the suite file (default {DEFAULT_CONFIGFILE})")
    p.add_argument("--cores", type=_positive, default=WORKFLOW_CORES)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("figures", help="draw results/figures/*.png from run records")
    p.add_argument("--runs", default=_DEFAULTS.runs_dir)
    p.add_argument("--out-dir", default=_DEFAULTS.pattern("figures"))
    p.set_defaults(func=cmd_figures)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with one usage line on bad syntax
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
