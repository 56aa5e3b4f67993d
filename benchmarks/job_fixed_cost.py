"""A job's fixed cost: interpreter start, imports, data load, in fresh processes, interleaved.

Each probe is one ``python -c`` process (one thread, as the workflow's jobs); the table gives the median
wall seconds of ``--repeats`` runs and, for the import probes, the increment over the previous one:

- ``python``: the interpreter alone;
- ``import torch``;
- ``+ mpqbench (evaluate/finetune)``: ``mpqbench.cli`` and ``mpqbench.pipeline`` (what ``mpqbench finetune`` /
  ``evaluate`` import before their first batch);
- ``+ flop_counter``: the same plus ``torch.utils.flop_counter``, which mpqbench.cost imported at module
  level before (it loads triton where installed); the difference is what the lazy import saves the jobs
  that never count MACs (evaluate);
- ``+ torch._dynamo``: what the first ``torch.optim`` optimizer or FlopCounterMode step of a training or
  search job imports on top (any Python dispatch mode or optimizer method wrapped by
  ``torch._disable_dynamo`` does);
- ``+ search modules``: ``mpqbench.search.run`` and the differentiable searches (``mpqbench search``);
- ``+ test split`` / ``+ train subset``: loading the Fashion-MNIST test split (evaluate) and the 5,000-image
  fine-tune subset (finetune), on top of the mpqbench imports;
- ``served job``: what a job pays with the workflow's job server (:mod:`mpqbench.jobserver`) instead of
  the imports: the ``mpqbench`` client process, the connection, the fork of a child with everything
  imported, a command that stops at its first check (a missing checkpoint), the child's exit and the
  client's. A served job's fixed cost is this plus its data load (the ``+ test split`` / ``+ train subset``
  increments).

    python benchmarks/job_fixed_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MPQ = "import mpqbench.cli, mpqbench.pipeline"
PROBES = [
    ("python", "pass"),
    ("import torch", "import torch"),
    ("+ mpqbench (evaluate/finetune)", MPQ),
    ("+ flop_counter", f"{MPQ}, torch.utils.flop_counter"),
    ("+ torch._dynamo", f"{MPQ}, torch._dynamo"),
    ("+ search modules", f"{MPQ}, mpqbench.search.run, mpqbench.search.differentiable"),
    ("+ test split", f"{MPQ}; from mpqbench.data import load_split; load_split('fashion-mnist', 'test', input_size=28)"),
    ("+ train subset", f"{MPQ}; from mpqbench.data import load_split, subset; "
                       "subset(load_split('fashion-mnist', 'train', input_size=28), count=5000, seed=0)"),
]
BASE = {"+ flop_counter": "+ mpqbench (evaluate/finetune)", "+ torch._dynamo": "+ mpqbench (evaluate/finetune)",
        "+ search modules": "+ mpqbench (evaluate/finetune)", "+ test split": "+ mpqbench (evaluate/finetune)",
        "+ train subset": "+ mpqbench (evaluate/finetune)", "+ mpqbench (evaluate/finetune)": "import torch",
        "import torch": "python"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    times: dict[str, list[float]] = {name: [] for name, _ in PROBES}
    for _ in range(args.repeats):
        for name, code in PROBES:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    # the same through a job server (started once, as the workflow does, and left out of the timing)
    import tempfile

    from mpqbench import jobserver

    folder = tempfile.mkdtemp(prefix="mpqjs-bench-")
    sock = os.path.join(folder, "s.sock")
    server = subprocess.Popen([sys.executable, "-m", "mpqbench.jobserver", "--socket", sock], env=env)
    while not os.path.exists(sock):
        time.sleep(0.1)
    client = [sys.executable, "-c", "import sys; from mpqbench.jobserver import main; sys.exit(main())",
              "evaluate", "--ckpt", "missing.pt", "--policy", "p.json", "--fp", "f.pt", "--out", "r.json"]
    times["served job"] = []
    try:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = subprocess.run(client, env={**env, jobserver.ENV: sock}, capture_output=True, text=True)
            times["served job"].append(time.perf_counter() - t0)
            assert out.returncode == 2, out.stderr
    finally:
        jobserver.stop(server, sock)
        os.rmdir(folder)
    PROBES.append(("served job", ""))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median wall seconds of {args.repeats} fresh processes (interleaved)")
    print(f"{'probe':<34}{'s':>7}{'+ s':>8}")
    for name, _ in PROBES:
        base = BASE.get(name)
        inc = f"{med[name] - med[base]:>8.2f}" if base else ""
        print(f"{name:<34}{med[name]:>7.2f}{inc}")


if __name__ == "__main__":
    main()
