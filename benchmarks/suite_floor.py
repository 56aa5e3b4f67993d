"""A committed suite's job time against its compute floor: the FP compute of the same steps at its precision.

Every job of a suite processes a known number of MACs: the searches and fine-tunes record theirs
(``search.macs_processed``, ``finetune.macs_processed``: FlopCounterMode over a real step × samples, so a
training sample counts forward + backward), the FP start model and the proxy teacher carry theirs in their
checkpoints, and an evaluation is the 10,000 test images × the forward MACs of the arch. The floor of a job
is those MACs at the throughput of the plain FP model doing the same kind of work on this machine, at the
suite's precision, one thread (as the workflow's jobs): a training step (forward, backward, SGD) at the
job's geometry and batch, or an evaluation forward (no grad). Measured in ``--concurrent`` processes at once
(default 2: the suite runs two one-thread jobs at a time on two cores; each process's median of ``--steps``
steps after a warm-up, averaged over the processes), ``--rounds`` times interleaved, median of the rounds;
``--concurrent 1 --rounds 1`` measures one process alone once, as this script did before. Single
measurements drift by 10-15 % on this VM from one minute to the next (benchmarks/PROFILE.md section 8), hence
the rounds. What a job spends above its floor is everything else: the quantizers, a search's own work beyond
forward/backward (the supernet's mixing, ASGA's perturbation), data loading, checkpoints, process start.

Prints the throughputs, then per rule: jobs, job time (jobs.tsv wall seconds), floor seconds, ratio; and the
suite's total, also calibrated to the run's own FP pretraining job (plain FP training at the fine-tune
geometry, so its job time over its floor is the machine's drift between the run and this measurement). Needs
the workflow's work folder (the FP checkpoints) next to the results.

    python benchmarks/suite_floor.py [--results results] [--work work/default] [--steps 30] [--search-batch 64]
                                     [--rounds 3] [--concurrent 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mpqbench.models import get_model  # noqa: E402
from mpqbench.train import autocast_for, tune_malloc  # noqa: E402

EVAL_IMAGES = 10_000


def _macs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        if train:
            F.cross_entropy(model(x), y).backward()
        else:
            with torch.no_grad():
                model(x)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def throughput(arch: str, width: float, size: int, batch: int, precision: str, *, train: bool, steps: int) -> float:
    """MACs per second of the plain FP model: training steps (SGD) or evaluation forwards."""
    torch.manual_seed(0)
    model = get_model(arch, num_classes=10, in_channels=1, input_size=size, width=width)
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 10, (batch,))
    macs = _macs(model, x, y, train)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train(train)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        if train:
            opt.zero_grad(set_to_none=True)
            with autocast_for("cpu", precision):
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
        else:
            with torch.no_grad(), autocast_for("cpu", precision):
                model(x)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return macs / statistics.median(times)


def _measure(args: tuple) -> float:
    """One process's throughput (a worker of :func:`concurrent_throughput`)."""
    torch.set_num_threads(1)
    tune_malloc()  # as the jobs do (benchmarks/PROFILE.md section 6)
    *geometry, train, steps = args
    return throughput(*geometry, train=train, steps=steps)


def concurrent_throughput(pool, n: int, arch: str, width: float, size: int, batch: int, precision: str, *,
                          train: bool, steps: int) -> float:
    """:func:`throughput` measured in ``n`` processes of ``pool`` at once (one thread each); their mean."""
    return statistics.fmean(pool.map(_measure, [(arch, width, size, batch, precision, train, steps)] * n,
                                     chunksize=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--work", default="work/default", help="the suite's work folder (fp/ and teacher/ checkpoints)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--search-batch", type=int, default=64, help="the suite's search batch size")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each throughput (median)")
    ap.add_argument("--concurrent", type=int, default=2,
                    help="processes measuring at once (the suite's concurrent jobs); 1 = one process alone")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results, work = Path(args.results), Path(args.work)
    records = [json.loads(p.read_text()) for p in sorted((results / "runs").rglob("*.json"))]
    jobs = list(csv.DictReader(open(results / "jobs.tsv"), delimiter="\t"))
    precision = {r["search"].get("precision", "fp32") for r in records}
    assert len(precision) == 1, precision
    precision = precision.pop()
    by_cell = {}
    for r in records:
        cell = f"{r['arch']}/{r['budget']['name']}/{r['method']}/{r['proxy']}-to-{r['target']}-s{r['seed']}"
        by_cell[cell] = r
    rec0 = records[0]
    arch, width = rec0["arch"], rec0["search"].get("width", 1.0)
    tsize = rec0["search"]["target_input_size"]
    print(f"FP {arch} throughput at {precision}, one thread per process, {args.concurrent} process(es) at once "
          f"(median of {args.steps} steps, mean over the processes):")
    import multiprocessing as mp

    fine = (tsize, 128)
    search_geoms = sorted({(r["search"]["proxy_input_size"], args.search_batch) for r in records})
    kinds = [("train", *fine), ("eval", *fine)] + [("train", size, batch) for size, batch in search_geoms]
    rounds: dict[tuple, list[float]] = {k: [] for k in kinds}
    with mp.get_context("spawn").Pool(args.concurrent) as pool:
        for _ in range(args.rounds):  # interleaved, so that the machine's drift hits every kind alike
            for kind, size, batch in kinds:
                rounds[kind, size, batch].append(concurrent_throughput(
                    pool, args.concurrent, arch, width, size, batch, precision, train=kind == "train",
                    steps=args.steps))
    thr = {k: statistics.median(v) for k, v in rounds.items()}
    for key, value in thr.items():
        print(f"  {key[0]:<5} {key[1]} px, batch {key[2]:<4} {value / 1e9:7.2f} GMAC/s  (rounds: "
              + " ".join(f"{v / 1e9:.2f}" for v in rounds[key]) + ")")
    fwd_macs = _macs(get_model(arch, num_classes=10, in_channels=1, input_size=tsize, width=width),
                     torch.randn(1, 1, tsize, tsize), torch.zeros(1, dtype=torch.long), False)

    def floor(job: dict) -> float:
        rule, cell = job["rule"], job["wildcards"]
        if rule == "pretrain_target":
            meta = torch.load(work / "fp" / f"{cell}-{rec0['target']}.pt", weights_only=True)["meta"]
            return meta["macs_processed"] / thr["train", *fine]
        if rule == "pretrain_proxy":
            meta = torch.load(work / "teacher" / f"{cell}.pt", weights_only=True)["meta"]
            return meta["macs_processed"] / thr["train", meta["input_size"], meta["batch_size"]] \
                if ("train", meta["input_size"], meta["batch_size"]) in thr else \
                meta["macs_processed"] / thr["train", *search_geoms[0]]
        r = by_cell.get(cell)
        if r is None:
            return 0.0
        if rule == "search":
            return r["search"]["macs_processed"] / thr["train", r["search"]["proxy_input_size"], args.search_batch]
        if rule == "finetune":
            return r["finetune"]["macs_processed"] / thr["train", *fine]
        if rule == "evaluate":
            return EVAL_IMAGES * fwd_macs / thr["eval", *fine]
        return 0.0

    per = defaultdict(lambda: [0, 0.0, 0.0])
    for job in jobs:
        row = per[job["rule"]]
        row[0] += 1
        row[1] += float(job["wall_s"])
        row[2] += floor(job)
    print("\n| rule | jobs | job time (s) | floor (s) | job time / floor |")
    print("|---|---|---|---|---|")
    for rule, (n, wall, fl) in sorted(per.items()):
        ratio = f"{wall / fl:.2f}" if fl > 0 else "n/a"
        print(f"| {rule} | {n} | {wall:.0f} | {fl:.0f} | {ratio} |")
    n, wall, fl = (sum(v[i] for v in per.values()) for i in range(3))
    print(f"| **all** | {n} | {wall:.0f} | {fl:.0f} | {wall / fl:.2f} |")
    print(f"\njob time / 2 cores = {wall / 2 / 60:.1f} min; floor / 2 cores = {fl / 2 / 60:.1f} min")
    pre = per.get("pretrain_target")
    if pre and pre[2] > 0:
        # the run's own FP training job against the floor measured now: the machine's drift between the two
        scale = pre[1] / pre[2]
        print(f"calibrated to the run's FP pretraining job (it ran at {scale:.2f}x the floor measured now): "
              f"floor {fl * scale:.0f} s, suite {wall / (fl * scale):.2f}x its floor")


if __name__ == "__main__":
    main()
