"""Train-step cost of LSQ quantization: FP vs fixed-policy QAT vs mixed-precision supernet; ASGA vs EdMIPS.

Two groups of configurations, each timed interleaved (round robin, so that load drift on a shared machine
hits them alike); the table shows the median step time and its ratio to the group's reference, as wall
time and as process CPU time. On a loaded machine use --threads 1 and read the CPU-time columns: they count
only this process's work, so they stay comparable when other jobs compete for the cores.

- training steps, CIFAR-style ResNet-20 on 1×28×28 inputs (the fine-tune geometry), 10 classes, batch 128,
  SGD step (forward + backward + update): FP (the reference); QAT = every searchable layer W3A3,
  stem/classifier W8A8; supernet = searchable layers over candidates {2,3,4} (W and A), stem/classifier W8A8.
  Goals: QAT ≤ 1.1× FP, supernet ≤ 1.3× FP.
- search steps on the search geometry (1×16×16, batch 64, as the default suite's digits searches): the
  EdMIPS step of ``mpqbench.search.differentiable`` (cross-entropy + complexity loss, one backward, SGD on the
  weights, the LSQ steps and the α's; the reference) and the ASGA step (``mpqbench.optim.asga.ASGA``: two
  forward/backward passes, the perturbation, frozen BN statistics). Goal: ASGA ≤ 2.05× EdMIPS.

Every configuration runs on the default LSQ backend unless ``--backends`` names others (the first one is
used for the search steps). ``--precision bf16`` runs the network forwards under CPU bfloat16 autocast
(:func:`mpqbench.train.autocast_for`; the quantizers stay in fp32), FP included, so the ratios compare like
with like. The process keeps freed heap memory as the jobs do (:func:`mpqbench.train.tune_malloc`).

    python benchmarks/quant_overhead.py [--steps 15] [--warmup 3] [--threads N] [--precision fp32|bf16]
                                        [--backends native,eager,compiled,reference] [--no-search]
The compiled backend compiles during warm-up (not timed).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mpqbench.quant import (arch_parameters, build_supernet, get_backend, quantize_model,  # noqa: E402
                            quantizer_parameters, set_backend, weight_parameters)
from mpqbench.train import autocast_for, tune_malloc  # noqa: E402

GOALS = {"QAT": 1.1, "supernet": 1.3, "ASGA": 2.05}


def resnet20(in_channels: int, num_classes: int, input_size: int = 28) -> tuple[nn.Module, tuple[str, str], list[str]]:
    """(model, (stem, classifier), searchable names) from mpqbench.models."""
    from mpqbench.models import fixed_layer_names, get_model, searchable_layer_names

    model = get_model("resnet20", num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    return model, fixed_layer_names(model), searchable_layer_names(model)


Step = Callable[[], None]


def train_steppers(backends: list[str], batch: int, precision: str) -> list[tuple[str, str, Step]]:
    torch.manual_seed(0)
    fp, (stem, fc), searchable = resnet20(1, 10)
    fixed = {stem: (8, 8), fc: (8, 8)}
    qat = quantize_model(copy.deepcopy(fp), {**fixed, **{n: (3, 3) for n in searchable}})
    supernet = quantize_model(build_supernet(copy.deepcopy(fp), searchable, [2, 3, 4], [2, 3, 4]), fixed)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    configs = [("FP", fp, backends[0])]
    for backend in backends:
        configs += [(f"QAT W3A3 {backend}", qat, backend), (f"supernet {{2,3,4}} {backend}", supernet, backend)]
    out = []
    for name, model, backend in configs:
        with torch.no_grad():
            model(x)  # calibrate LSQ steps
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step(model=model, opt=opt, backend=backend) -> None:
            set_backend(backend)
            opt.zero_grad(set_to_none=True)
            with autocast_for(x.device, precision):
                logits = model(x)
            F.cross_entropy(logits.float(), y).backward()
            opt.step()

        out.append((name, backend, step))
    return out


def search_steppers(backend: str, batch: int, precision: str) -> list[tuple[str, str, Step]]:
    """The EdMIPS and ASGA steps of the differentiable search (mpqbench.search.differentiable's loop body)."""
    from mpqbench.cost import arch_cost, budget_bitops_g
    from mpqbench.optim.asga import ASGA
    from mpqbench.search.differentiable import AsgaHparams, DifferentiableSearch

    cost = arch_cost("resnet20", input_size=28, num_classes=10, in_channels=1)
    ctx = SimpleNamespace(target_macs=cost.macs, budget_bitops_g=budget_bitops_g("w3a3", cost.macs, cost.searchable))
    hp = AsgaHparams(lr_alpha=0.5)
    host = DifferentiableSearch()
    torch.manual_seed(1)
    base, _, searchable = resnet20(1, 10, input_size=16)
    x, y = torch.randn(batch, 1, 16, 16), torch.randint(0, 10, (batch,))
    out = []
    for name in ("EdMIPS step", "ASGA step"):
        net = build_supernet(copy.deepcopy(base), searchable, [2, 3, 4], [2, 3, 4])
        with torch.no_grad():
            net(x)
        alphas, steps_q, weights = arch_parameters(net), quantizer_parameters(net), weight_parameters(net)
        groups = [{"params": [p for p in weights if p.ndim > 1], "weight_decay": hp.weight_decay},
                  {"params": [p for p in weights if p.ndim <= 1], "weight_decay": 0.0}]
        if name.startswith("ASGA"):
            opt_w = ASGA(groups, torch.optim.SGD, rho_init=hp.rho_init, rho_max=hp.rho_max, beta=hp.beta, model=net,
                         lr=hp.lr_w, momentum=hp.momentum)
        else:
            opt_w = torch.optim.SGD(groups, lr=hp.lr_w, momentum=hp.momentum)
        opt_q = torch.optim.SGD(steps_q, lr=hp.lr_w, momentum=hp.momentum)
        opt_a = torch.optim.SGD(alphas, lr=hp.lr_alpha, momentum=hp.momentum)

        def step(net=net, opt_w=opt_w, opt_q=opt_q, opt_a=opt_a, asga=name.startswith("ASGA"), alphas=alphas,
                 steps_q=steps_q) -> None:
            set_backend(backend)

            def closure() -> torch.Tensor:
                with autocast_for(x.device, precision):
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), y) + host.complexity_loss(net, ctx, hp)
                loss.backward()
                return loss.detach()

            for o in (opt_w, opt_q, opt_a):
                o.zero_grad(set_to_none=True)
            if asga:
                opt_w.step(closure, extra_params=alphas + steps_q, extra_grad=hp.alpha_grad)
            else:
                closure()
                opt_w.step()
            opt_q.step()
            opt_a.step()

        out.append((name, backend, step))
    return out


def timed(steppers: list[tuple[str, str, Step]], steps: int, warmup: int) -> dict[str, tuple[float, float]]:
    for _ in range(warmup):
        for _, _, step in steppers:
            step()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in steppers}
    for _ in range(steps):
        for name, _, step in steppers:
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
            for name, ts in times.items()}


def table(med: dict[str, tuple[float, float]], ref: str, goals: dict[str, float]) -> None:
    print(f"{'config':<28}{'wall ms':>9}{'x ref':>7}{'cpu ms':>9}{'x ref':>7}   goal (cpu)")
    for name, (wall, cpu) in med.items():
        goal = next((g for key, g in goals.items() if name.startswith(key)), None)
        ratio = cpu / med[ref][1]
        mark = "" if goal is None else f"   <= {goal:.2f}: {'met' if ratio <= goal else 'NOT met'}"
        print(f"{name:<28}{wall * 1e3:>9.1f}{wall / med[ref][0]:>7.2f}{cpu * 1e3:>9.1f}{ratio:>7.2f}{mark}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128, help="batch of the training steps")
    ap.add_argument("--search-batch-size", type=int, default=64, help="batch of the search steps")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--backends", default=get_backend(), help="LSQ backends to time, comma-separated "
                    "(default: the default backend)")
    ap.add_argument("--no-search", action="store_true", help="leave out the ASGA/EdMIPS search steps")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_malloc()
    backends = [b for b in args.backends.split(",") if b]
    old = get_backend()
    try:
        med = timed(train_steppers(backends, args.batch_size, args.precision), args.steps, args.warmup)
        search = None if args.no_search else timed(search_steppers(backends[0], args.search_batch_size,
                                                                    args.precision), args.steps, args.warmup)
    finally:
        set_backend(old)
    print(f"resnet20, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.precision}, "
          f"median of {args.steps} steps after {args.warmup} warm-up (interleaved)")
    print(f"training steps, 1x28x28, batch {args.batch_size}:")
    table(med, "FP", {k: v for k, v in GOALS.items() if k != "ASGA"})
    if search is not None:
        print(f"search steps ({backends[0]} backend), 1x16x16, batch {args.search_batch_size}:")
        table(search, "EdMIPS step", {"ASGA": GOALS["ASGA"]})


if __name__ == "__main__":
    main()
