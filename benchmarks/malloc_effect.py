"""What :func:`mpqbench.train.tune_malloc` (keep freed heap memory) saves per training step, measured in one run.

Fresh child processes alternate with and without the allocator setting (A B A B ...; a process cannot undo
it); each times ``--steps`` SGD steps (after 3 warm-up steps) of the FP, QAT W3A3 and {2,3,4} supernet
ResNet-20 on 1×28×28, batch 128, one thread, and counts the minor page faults per step. The table gives the
median CPU ms per step and page faults per step of each configuration, and the ratio tuned / default.

    python benchmarks/malloc_effect.py [--rounds 3] [--steps 6]
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
import copy, json, resource, sys, time
import torch, torch.nn.functional as F
sys.path.insert(0, {bench!r})
from quant_overhead import resnet20
from mpqbench.quant import build_supernet, quantize_model
from mpqbench.train import tune_malloc
if {tune}:
    assert tune_malloc()
torch.set_num_threads(1)
torch.manual_seed(0)
fp, (stem, fc), searchable = resnet20(1, 10)
fixed = {{stem: (8, 8), fc: (8, 8)}}
models = {{"FP": fp, "QAT W3A3": quantize_model(copy.deepcopy(fp), {{**fixed, **{{n: (3, 3) for n in searchable}}}}),
          "supernet": quantize_model(build_supernet(copy.deepcopy(fp), searchable, [2, 3, 4], [2, 3, 4]), fixed)}}
x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
out = {{}}
for name, m in models.items():
    with torch.no_grad():
        m(x)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        opt.step()
    for _ in range(3):
        step()
    r0, c0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
    for _ in range({steps}):
        step()
    out[name] = ((time.process_time() - c0) / {steps}, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / {steps})
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.rounds):
        for tune in (False, True):
            code = CHILD.format(bench=str(REPO / "benchmarks"), tune=tune, steps=args.steps)
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            runs[tune].append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"median of {args.rounds} processes each, {args.steps} steps per configuration; cpu ms per step, "
          "minor page faults per step")
    print(f"{'config':<12}{'default ms':>12}{'tuned ms':>10}{'tuned/default':>15}{'faults default':>16}{'faults tuned':>14}")
    for name in runs[False][0]:
        med = {t: (statistics.median(r[name][0] for r in runs[t]), statistics.median(r[name][1] for r in runs[t]))
               for t in runs}
        print(f"{name:<12}{med[False][0] * 1e3:>12.1f}{med[True][0] * 1e3:>10.1f}{med[True][0] / med[False][0]:>15.2f}"
              f"{med[False][1]:>16.0f}{med[True][1]:>14.0f}")


if __name__ == "__main__":
    main()
