"""The LSQ fake-quant kernels in isolation: native (fused C) against eager (torch ops), one activation tensor.

A 128×16×28×28 ReLU output (the first stage of ResNet-20 at 28 px, batch 128) with a per-tensor step:
K = 1 (fixed precision, unsigned 3 bit) and K = 3 (supernet mixture of 2/3/4 bit), forward and backward
(∂/∂v and the step/mixing sums), float32 and, for native, bfloat16. Median milliseconds of ``--repeats``
calls after one warm-up, interleaved. In a training step the same calls are slower (their inputs come from
memory, not cache); benchmarks/quant_overhead.py measures that.

    python benchmarks/lsq_kernels.py [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mpqbench.quant import native  # noqa: E402
from mpqbench.quant.lsq import _eager_backward, _eager_forward  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if native.load() is None:
        raise SystemExit(f"error: the native kernels are not available ({native.load_error()})")
    torch.manual_seed(0)
    v = torch.randn(128, 16, 28, 28).relu()
    g = torch.randn_like(v)
    vb, gb = v.bfloat16(), g.bfloat16()
    cases = {1: (torch.tensor([0.3]), None, ((0, 7),)),
             3: (torch.tensor([0.3, 0.15, 0.07]), torch.tensor([0.2, 0.3, 0.5]), ((0, 3), (0, 7), (0, 15)))}
    fns = {}
    for k, (steps, probs, bounds) in cases.items():
        fns[(k, "eager fp32", "fwd")] = lambda s=steps, p=probs, b=bounds: _eager_forward(v, s, p, b)
        fns[(k, "eager fp32", "bwd")] = lambda s=steps, p=probs, b=bounds: _eager_backward(v, g, s, p, b)
        fns[(k, "native fp32", "fwd")] = lambda s=steps, p=probs, b=bounds: native.forward(v, s, p, b)
        fns[(k, "native fp32", "bwd")] = lambda s=steps, p=probs, b=bounds: native.backward(v, g, s, p, b)
        fns[(k, "native bf16", "fwd")] = lambda s=steps, p=probs, b=bounds: native.forward(vb, s, p, b)
        fns[(k, "native bf16", "bwd")] = lambda s=steps, p=probs, b=bounds: native.backward(vb, gb, s, p, b)
    for fn in fns.values():
        fn()
    times: dict = {key: [] for key in fns}
    for _ in range(args.repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    print(f"128x16x28x28 activation, {torch.get_num_threads()} threads, median ms of {args.repeats} (interleaved)")
    print(f"{'K':>2}  {'kernel':<13}{'forward':>9}{'backward':>10}")
    for k in cases:
        for name in ("eager fp32", "native fp32", "native bf16"):
            f, b = (statistics.median(times[(k, name, d)]) * 1e3 for d in ("fwd", "bwd"))
            print(f"{k:>2}  {name:<13}{f:>9.2f}{b:>10.2f}")


if __name__ == "__main__":
    main()
