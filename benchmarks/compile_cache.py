"""Does the "compiled" LSQ backend pay for its start-up in a job-sized process, with inductor's on-disk cache?

Fresh processes (one thread, as the workflow's jobs), alternating backends, each: build the W3A3 QAT and
the {2,3,4} supernet ResNet-20 (1×28×28, batch 128), time the first training step of each (compilation,
or loading compiled kernels from the cache, happens there) and the median of ``--steps`` later steps. The
first compiled process may compile cold (or find the cache of an earlier run); the later ones start with
a warm inductor cache (``TORCHINDUCTOR_CACHE_DIR``, default under the system temp folder). The table shows,
per backend, the median over ``--rounds`` processes of the first-step time and of the step time, and the
break-even number of steps after which the compiled backend's faster steps (if faster) repay its start-up.

    python benchmarks/compile_cache.py [--rounds 2] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import copy, json, statistics, sys, time
t_start = time.perf_counter()
import torch, torch.nn.functional as F
sys.path.insert(0, {bench!r})
from quant_overhead import resnet20
from mpqbench.quant import build_supernet, quantize_model, set_backend
from mpqbench.train import tune_malloc
tune_malloc()
torch.set_num_threads(1)
set_backend({backend!r})
torch.manual_seed(0)
fp, (stem, fc), searchable = resnet20(1, 10)
fixed = {{stem: (8, 8), fc: (8, 8)}}
models = {{"QAT W3A3": quantize_model(copy.deepcopy(fp), {{**fixed, **{{n: (3, 3) for n in searchable}}}}),
          "supernet": quantize_model(build_supernet(copy.deepcopy(fp), searchable, [2, 3, 4], [2, 3, 4]), fixed)}}
x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
out = {{}}
for name, m in models.items():
    with torch.no_grad():
        m(x)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    def step():
        t = time.process_time()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        opt.step()
        return time.process_time() - t
    first = step()
    later = statistics.median(step() for _ in range({steps}))
    out[name] = (first, later)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    runs: dict[str, list[dict]] = {"native": [], "compiled": []}
    for _ in range(args.rounds):
        for backend in runs:
            code = CHILD.format(bench=str(REPO / "benchmarks"), backend=backend, steps=args.steps)
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            runs[backend].append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"cpu seconds; median over {args.rounds} fresh processes per backend (first compiled one may be cold)")
    print(f"{'config':<12}{'backend':<10}{'first step':>12}{'later step':>12}{'cold/first':>12}")
    for name in runs["native"][0]:
        med = {}
        for backend, rs in runs.items():
            first = statistics.median(r[name][0] for r in rs)
            later = statistics.median(r[name][1] for r in rs)
            med[backend] = (first, later)
            print(f"{name:<12}{backend:<10}{first:>12.2f}{later:>12.3f}{rs[0][name][0]:>12.2f}")
        extra = med["compiled"][0] - med["native"][0]
        gain = med["native"][1] - med["compiled"][1]
        verdict = f"pays after {extra / gain:.0f} steps" if gain > 0 else "never pays (its steps are not faster)"
        print(f"{'':<22}compiled start-up {extra:+.2f} s, {gain * 1e3:+.1f} ms per step: {verdict}")


if __name__ == "__main__":
    main()
