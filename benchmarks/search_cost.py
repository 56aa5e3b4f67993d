"""Per-step cost of the differentiable searches: EdMIPS, GMPQ, ASGA and GMPQ-ASGA, measured in one run.

Setting: ResNet-20 (width 1.0) on scikit-learn's digits resized to 28×28 (1 channel, 10 classes), batch 128,
budget w3a3, candidates {2,3,4}, on the CPU unless ``--device`` says otherwise. Each method's own ``search``
runs (the real loop and step functions of ``mpqbench.search.differentiable`` / ``baselines``) with a
:class:`~mpqbench.cost.CostMeter` that also records the wall time of every step; the table gives the
median seconds per step after ``--warmup`` steps and the MACs of one step (FlopCounterMode over the first
real step, forward + backward + everything else the step does), with ratios to EdMIPS. ASGA's floor is two
forward/backward passes per step, so its goal is ≤ 2.1× EdMIPS per step.

GMPQ needs an FP teacher pretrained on the proxy: a quick one (1 epoch on digits) is trained in a temporary
folder first, and its training time is printed too.

    python benchmarks/search_cost.py [--steps N] [--warmup W] [--rounds R] [--threads T]

One intra-op thread by default: on a machine shared with other jobs, several OpenMP threads spin-wait for
each other and both wall and CPU time per step scatter by 2× or more; one thread gives stable ratios.

With ``--rounds`` > 1 the methods run interleaved (edmips, gmpq, asga, gmpq-asga, edmips, ...) so that drift in
the machine's load hits every method alike; the median is over all timed steps of all rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mpqbench.cost import CostMeter  # noqa: E402
from mpqbench.data import dataset_info, load_split, subset  # noqa: E402
from mpqbench.search import SearchContext, get_method  # noqa: E402
from mpqbench.search.run import parse_hparams, target_geometry  # noqa: E402
from mpqbench.cost import budget_bitops_g  # noqa: E402
from mpqbench.utils import device_name, resolve_device, seed_everything  # noqa: E402

ARCH, WIDTH, PROXY, INPUT_SIZE, BUDGET = "resnet20", 1.0, "digits", 28, "w3a3"
METHODS = ("edmips", "gmpq", "asga", "gmpq-asga")
GOAL = {"asga": 2.1}  # per-step time relative to edmips


class TimingMeter(CostMeter):
    """A CostMeter that also keeps the wall seconds of each step (the methods call ``meter.step``)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.step_s: list[float] = []
        self.step_cpu_s: list[float] = []
        self.batch_sizes: list[int] = []

    @contextlib.contextmanager
    def step(self, batch_size: int, kind: str = "step") -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        with super().step(batch_size, kind):
            yield
        self.step_s.append(time.perf_counter() - t0)
        self.step_cpu_s.append(time.process_time() - c0)
        self.batch_sizes.append(batch_size)

    def macs_per_step(self, batch_size: int) -> float:
        """MACs of one step of ``batch_size`` samples (FlopCounterMode over the first real step)."""
        return self.macs_per_sample * batch_size


def pretrain_teacher(out: Path, *, batch_size: int, device: str) -> dict:
    from mpqbench.pipeline import pretrain
    from mpqbench.train import TrainConfig

    cfg = TrainConfig(epochs=1, lr=0.1, batch_size=batch_size, seed=0, device=device)
    return pretrain(arch=ARCH, dataset=PROXY, data_root=None, input_size=INPUT_SIZE, width=WIDTH, subset=None,
                    cfg=cfg, out=out, progress=False)


def run_method(name: str, *, proxy_train, total_steps: int, steps_per_epoch: int, batch_size: int, tgt,
               device: torch.device, teacher: Path, seed: int) -> TimingMeter:
    """Run ``name``'s real search for exactly ``total_steps`` steps; return its meter."""
    cls = get_method(name)
    # ceil(epochs · steps_per_epoch) = total_steps exactly
    hp = parse_hparams(cls, {"epochs": (total_steps - 0.5) / steps_per_epoch, "batch_size": batch_size})
    meter = TimingMeter(device)
    ctx = SearchContext(
        arch=ARCH, proxy=PROXY, proxy_train=proxy_train, num_classes=10, in_channels=1, input_size=INPUT_SIZE,
        width=WIDTH, target_macs=tgt.macs, searchable=list(tgt.searchable), fixed=list(tgt.fixed),
        budget_name=BUDGET, budget_bitops_g=budget_bitops_g(BUDGET, tgt.macs, list(tgt.searchable)),
        w_candidates=[2, 3, 4], a_candidates=[2, 3, 4], seed=seed, device=device, meter=meter,
        teacher_ckpt=teacher if cls.needs_teacher else None, progress=False,
    )
    seed_everything(seed)
    cls().search(ctx, hp)
    if meter.steps != total_steps:
        raise RuntimeError(f"{name} ran {meter.steps} steps, expected {total_steps}")
    return meter


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per method and round (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one runs FlopCounterMode)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds over the methods")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: per-step ratios are reproducible on a shared machine; "
                         "0 = torch's default)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated; edmips is the reference")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    if "edmips" not in methods:
        methods.insert(0, "edmips")
    device = resolve_device(args.device)

    info = dataset_info(PROXY)
    assert (info.num_classes, info.in_channels) == (10, 1)
    full = load_split(PROXY, "train", input_size=INPUT_SIZE)
    # Whole batches only, so that every timed step processes batch_size images.
    n = (len(full) // args.batch_size) * args.batch_size
    proxy_train = subset(full, count=n, seed=0)
    steps_per_epoch = n // args.batch_size
    tgt, _ = target_geometry(ARCH, PROXY, input_size=INPUT_SIZE, width=WIDTH, data_root=None)
    total_steps = args.warmup + args.steps

    print(f"search cost per step: {ARCH} width {WIDTH}, {PROXY} {INPUT_SIZE}x{INPUT_SIZE} ({n} train images, "
          f"{steps_per_epoch} steps/epoch), batch {args.batch_size}, budget {BUDGET}, candidates w/a {{2,3,4}}")
    print(f"device {device_name(device)}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.warmup} warm-up + {args.steps} timed steps x {args.rounds} round(s)")

    with tempfile.TemporaryDirectory(prefix="mpqbench-search-cost-") as tmp:
        teacher = Path(tmp) / "teacher_digits.pt"
        teacher_s = None
        if any(get_method(m).needs_teacher for m in methods):
            t0 = time.perf_counter()
            meta = pretrain_teacher(teacher, batch_size=args.batch_size, device=args.device)
            teacher_s = time.perf_counter() - t0
            print(f"GMPQ teacher: 1 epoch FP pretrain on {PROXY} took {teacher_s:.1f} s "
                  f"(train {meta['wall_s']:.1f} s, test top-1 {meta['top1']:.1f}%)")

        times: dict[str, list[float]] = {m: [] for m in methods}
        cpu_times: dict[str, list[float]] = {m: [] for m in methods}
        macs: dict[str, float] = {}
        failed: dict[str, str] = {}
        for r in range(args.rounds):
            for m in methods:
                if m in failed:
                    continue
                try:
                    meter = run_method(m, proxy_train=proxy_train, total_steps=total_steps,
                                       steps_per_epoch=steps_per_epoch, batch_size=args.batch_size, tgt=tgt,
                                       device=device, teacher=teacher, seed=r)
                except Exception as exc:  # noqa: BLE001 - report the failing method, measure the others
                    failed[m] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    print(f"  {m}: FAILED ({failed[m]})", flush=True)
                    continue
                timed = meter.step_s[args.warmup:]
                times[m].extend(timed)
                cpu_times[m].extend(meter.step_cpu_s[args.warmup:])
                macs[m] = meter.macs_per_step(args.batch_size)
                print(f"  round {r + 1}: {m:10s} median {statistics.median(timed):.3f} s/step "
                      f"(min {min(timed):.3f}, max {max(timed):.3f}; cpu "
                      f"{statistics.median(meter.step_cpu_s[args.warmup:]):.3f} s), "
                      f"{macs[m] / 1e9:.2f} GMACs/step", flush=True)

    ref_s = statistics.median(times["edmips"]) if times.get("edmips") else None
    ref_cpu = statistics.median(cpu_times["edmips"]) if cpu_times.get("edmips") else None
    ref_macs = macs.get("edmips")
    print()
    print("s/step = median wall seconds per step; cpu s/step = median CPU seconds of this process per step (all its")
    print("threads; less sensitive to other load on the machine); GMACs/step from FlopCounterMode over one real step.")
    print(f"{'method':10s} {'s/step':>8s} {'x edmips':>9s} {'cpu s/step':>11s} {'x edmips':>9s} {'GMACs/step':>11s} "
          f"{'x edmips':>9s}  note")
    ok = True
    for m in methods:
        if m in failed:
            print(f"{m:10s} {'-':>8s} {'-':>9s} {'-':>11s} {'-':>9s} {'-':>11s} {'-':>9s}  failed: {failed[m]}")
            ok = False
            continue
        s = statistics.median(times[m])
        c = statistics.median(cpu_times[m])
        t_ratio = s / ref_s if ref_s else float("nan")
        c_ratio = c / ref_cpu if ref_cpu else float("nan")
        m_ratio = macs[m] / ref_macs if ref_macs else float("nan")
        note = ""
        if m in GOAL:
            met = t_ratio <= GOAL[m]
            ok &= met
            note = f"goal <= {GOAL[m]}x: {'met' if met else 'NOT met'}"
        print(f"{m:10s} {s:8.3f} {t_ratio:9.2f} {c:11.3f} {c_ratio:9.2f} {macs[m] / 1e9:11.2f} {m_ratio:9.2f}  {note}")
    if teacher_s is not None:
        print(f"(GMPQ teacher pretrain, once per proxy: {teacher_s:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
