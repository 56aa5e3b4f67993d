"""Train-step cost of LSQ quantization: FP vs fixed-policy QAT vs mixed-precision supernet.

CIFAR-style ResNet-20 on 1×28×28 inputs, 10 classes, SGD step (forward + backward + update). QAT = every
searchable layer W3A3, stem/classifier W8A8; supernet = searchable layers over candidates {2,3,4} (W and A),
stem/classifier W8A8. Steps of all configurations are interleaved (round robin) so that load drift on a
shared machine hits them alike; the table shows the median step time and its ratio to FP of the same run,
as wall time and as process CPU time. On a loaded machine use --threads 1 and read the CPU-time columns:
they count only this process's work, so they stay comparable when other jobs compete for the cores.

    python benchmarks/quant_overhead.py [--steps 15] [--warmup 3] [--batch-size 128] [--threads N]
                                        [--backends eager,compiled,reference]
The compiled backend compiles during warm-up (not timed).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from mpqbench.quant import build_supernet, quantize_model, set_backend


def resnet20(in_channels: int, num_classes: int) -> tuple[nn.Module, tuple[str, str], list[str]]:
    """(model, (stem, classifier), searchable names): mpqbench.models' resnet20, or a minimal local copy."""
    try:
        from mpqbench.models import fixed_layer_names, get_model, searchable_layer_names
        model = get_model("resnet20", num_classes=num_classes, in_channels=in_channels, input_size=28)
        return model, fixed_layer_names(model), searchable_layer_names(model)
    except ImportError:
        pass

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(out + (x if self.downsample is None else self.downsample(x)))

    blocks, cin = [], 16
    for cout, stride in [(16, 1), (32, 2), (64, 2)]:
        for b in range(3):
            blocks.append(Block(cin, cout, stride if b == 0 else 1))
            cin = cout
    model = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return model, (names[0], names[-1]), names[1:-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--backends", default="eager,compiled", help="LSQ backends to time, comma-separated")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fp, (stem, fc), searchable = resnet20(1, 10)
    fixed = {stem: (8, 8), fc: (8, 8)}
    qat = quantize_model(copy.deepcopy(fp), {**fixed, **{n: (3, 3) for n in searchable}})
    supernet = quantize_model(build_supernet(copy.deepcopy(fp), searchable, [2, 3, 4], [2, 3, 4]), fixed)
    x, y = torch.randn(args.batch_size, 1, 28, 28), torch.randint(0, 10, (args.batch_size,))
    configs = [("FP", fp, "eager")]
    for backend in args.backends.split(","):
        configs += [(f"QAT W3A3 {backend}", qat, backend), (f"supernet {{2,3,4}} {backend}", supernet, backend)]
    steppers = []
    for name, model, backend in configs:
        with torch.no_grad():
            model(x)  # calibrate LSQ steps
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step(model=model, opt=opt, backend=backend) -> tuple[float, float]:
            set_backend(backend)
            t0, c0 = time.perf_counter(), time.process_time()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            return time.perf_counter() - t0, time.process_time() - c0

        steppers.append((name, step))
    for _ in range(args.warmup):
        for _, step in steppers:
            step()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in steppers}
    for _ in range(args.steps):
        for name, step in steppers:
            times[name].append(step())
    set_backend("eager")
    med = {name: [statistics.median(t[i] for t in ts) for i in (0, 1)] for name, ts in times.items()}
    print(f"resnet20 1x28x28 batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps after {args.warmup} warm-up (interleaved)")
    print(f"{'config':<28}{'wall ms':>9}{'x FP':>7}{'cpu ms':>9}{'x FP':>7}")
    for name, (wall, cpu) in med.items():
        print(f"{name:<28}{wall * 1e3:>9.1f}{wall / med['FP'][0]:>7.2f}{cpu * 1e3:>9.1f}{cpu / med['FP'][1]:>7.2f}")


if __name__ == "__main__":
    main()
