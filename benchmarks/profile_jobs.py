"""Where one job of each kind spends its time: process start, imports, data, model build, LSQ, conv, ...

Runs the real commands of the default workflow (``mpqbench search`` for edmips and asga on digits,
``mpqbench finetune``, ``mpqbench evaluate``, with config/config.yaml's arguments) one after the other, each
in a fresh process on one thread (OMP_NUM_THREADS=1, as the workflow's jobs), and prints one table:

- ``start``: interpreter start until the profiling child runs its first line;
- ``import torch`` and ``import mpqbench``: the command's modules (mpqbench.cli and the module behind the
  sub-command) after torch;
- inside the command: wall time of the phases, measured by wrapping the functions that do them: ``data``
  (dataset parsing, resizing, subsets and every batch), ``build`` (model construction, LSQ / supernet layer
  swaps, the cost tables' probe forwards), ``io`` (checkpoint load/save); the steps (``CostMeter.step``
  of search and training; evaluation: batch to batch) are split by the shares that ``torch.profiler``
  measures over steps 5-9 (self CPU time of every event, attributed to its nearest categorised
  ancestor): ``lsq`` (the fake-quant forward and backward, weights and activations), ``conv``
  (convolutions and the classifier's matmul, forward and backward), ``bn`` (batch norm), ``optim`` (SGD
  updates, zero_grad), ``other ops`` (ReLU, add, pooling, loss, ASGA's perturbation, ...) and ``python``
  (interpreter time between ops, autograd bookkeeping; plus the command's time outside phases and steps:
  setup, the calibration forward, the first step's FlopCounterMode pass);
- ``first batch``: seconds from process start to the first training/evaluation batch;
- ``job``: process start until the command returned, less the profiler's own start/stop (the sum of the
  columns before it); ``wall`` / ``cpu``: the child process as the parent saw it, which adds the profiler's
  start/stop, its analysis and interpreter exit.

Inputs are made first in ``--work`` (a small FP model: ``mpqbench pretrain`` on a 3,000-image subset for one
epoch; the policies come from the two searches), unless they are already there.

    python benchmarks/profile_jobs.py [--work DIR] [--jobs search-edmips,search-asga,finetune,evaluate]
                                      [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOBS = ("search-edmips", "search-asga", "finetune", "evaluate")
CATEGORIES = ("data", "build", "io", "lsq", "conv", "bn", "optim", "other ops", "python")


def job_argv(kind: str, work: Path) -> list[str]:
    """The workflow's command line for one job (config/config.yaml, workflow/rules/common.smk)."""
    common = ["--device", "cpu", "--no-progress"]
    if kind.startswith("search-"):
        method = kind.split("-", 1)[1]
        return ["search", "--method", method, "--label", method, "--arch", "resnet20", "--proxy", "digits",
                "--proxy-input-size", "16", "--target", "fashion-mnist", "--target-input-size", "28",
                "--budget", "w3a3", "--seed", "0", "--width", "1.0", "--epochs", "5", "--batch-size", "64",
                "--w-candidates", "2,3,4", "--a-candidates", "2,3,4", "--hp", "lr_alpha=0.5", *common,
                "--out", str(work / f"policy-{method}.json")]
    if kind == "finetune":
        return ["finetune", "--policy", str(work / "policy-asga.json"), "--fp", str(work / "fp.pt"),
                "--dataset", "fashion-mnist", "--subset", "5000", "--epochs", "1", "--lr", "0.01",
                "--batch-size", "128", "--seed", "0", *common, "--out", str(work / "qat.pt")]
    if kind == "evaluate":
        return ["evaluate", "--ckpt", str(work / "qat.pt"), "--policy", str(work / "policy-asga.json"),
                "--fp", str(work / "fp.pt"), "--dataset", "fashion-mnist", "--suite", "default",
                "--batch-size", "128", *common, "--out", str(work / "record.json")]
    raise SystemExit(f"unknown job {kind!r}; choose from {', '.join(JOBS)}")


# ---- child: one job, timed by phase, with a profiled window of steps ---------------------------------------
PROFILED_STEPS = (5, 10)  # [first, last) step (or evaluation batch) recorded by torch.profiler


def _child(argv: list[str]) -> None:
    t_child = time.time()
    t0 = float(os.environ["MPQBENCH_PROFILE_T0"])
    marks: dict[str, float] = {"start": t_child - t0}
    t = time.perf_counter()
    import torch
    marks["import torch"] = time.perf_counter() - t
    t = time.perf_counter()
    import mpqbench.cli as cli
    if argv[0] == "search":
        import mpqbench.search.run  # noqa: F401
    else:
        import mpqbench.pipeline  # noqa: F401
    marks["import mpqbench"] = time.perf_counter() - t
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    state = _Instrument(prof, t0)
    t = time.perf_counter()
    rc = cli.main(argv)
    main_s = time.perf_counter() - t - state.profiler_s
    job_s = time.time() - t0 - state.profiler_s
    if rc:
        raise SystemExit(rc)
    if state.profiling:
        prof.stop()
    phases = dict(state.phase_s)
    steps_s = sum(state.step_s)
    window_s = sum(state.step_s[PROFILED_STEPS[0]:PROFILED_STEPS[1]])
    shares = _categorise(prof.events(), window_s) if state.step_s[PROFILED_STEPS[1] - 1:] else {}
    out = {k: phases.get(k, 0.0) for k in ("data", "build", "io")}
    for cat in CATEGORIES[3:]:  # the steps' time split by the profiled window's shares
        out[cat] = steps_s * shares.get(cat, 0.0) / window_s if window_s else 0.0
    # time in the command outside the phases and the steps (setup, FlopCounterMode's first step, ...)
    out["python"] += max(0.0, main_s - sum(out.values()))
    print(json.dumps({"marks": marks, "main_s": main_s, "job_s": job_s, "shares": out, "steps": len(state.step_s),
                      "steps_s": steps_s, "first_batch_s": state.first_batch}))


class _Instrument:
    """Wall time of the phases (wrapped functions) and of each step; torch.profiler over a few steps.

    A step is one ``CostMeter.step`` (search and training), or one evaluation batch when no meter
    runs. Phase time spent inside a step (e.g. the next batch) is left out of the step's time.
    """

    def __init__(self, prof, t0: float) -> None:
        import contextlib
        import functools

        import torch

        import mpqbench.cost
        import mpqbench.data
        import mpqbench.pipeline
        import mpqbench.quant
        import mpqbench.search.differentiable
        import mpqbench.search.run
        import mpqbench.train
        import mpqbench.utils

        self.prof, self.t0 = prof, t0
        self.phase_s: dict[str, float] = {}
        self.step_s: list[float] = []
        self.first_batch: float | None = None
        self.profiling = False
        self.profiler_s = 0.0  # starting/stopping the profiler: not the job's time
        self._in_phase = 0
        self._step_start: float | None = None
        self._phase_in_step = 0.0
        self._eval_mode = False  # inside evaluate(): a step is the time from one batch to the next

        def wrap(fn, label):
            @functools.wraps(fn)
            def inner(*args, **kwargs):
                if self._in_phase:
                    return fn(*args, **kwargs)
                self._in_phase += 1
                t = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    dt = time.perf_counter() - t
                    self._in_phase -= 1
                    self.phase_s[label] = self.phase_s.get(label, 0.0) + dt
                    if self._step_start is not None:
                        self._phase_in_step += dt
            return inner

        modules = [mpqbench.data, mpqbench.pipeline, mpqbench.search.run, mpqbench.search.differentiable,
                   mpqbench.train, mpqbench.cost, mpqbench.utils, mpqbench.quant]
        for name, label in (("load_split", "data"), ("subset", "data"), ("get_model", "build"),
                            ("quantize_model", "build"), ("build_supernet", "build"),
                            ("quantized_model", "build"), ("layer_macs", "build"),
                            ("target_geometry", "build"), ("torch_save", "io"), ("load_checkpoint", "io")):
            for mod in modules:
                if hasattr(mod, name):
                    setattr(mod, name, wrap(getattr(mod, name), label))
        torch.load = wrap(torch.load, "io")
        batch = wrap(mpqbench.data.TensorImageDataset.batch, "data")

        @functools.wraps(batch)
        def counted_batch(ds, *args, **kwargs):
            if self.first_batch is None:
                self.first_batch = time.time() - self.t0
            if self._eval_mode:
                self._end_step()
                self._begin_step()
            return batch(ds, *args, **kwargs)

        mpqbench.data.TensorImageDataset.batch = counted_batch
        meter_step = mpqbench.cost.CostMeter.step

        @contextlib.contextmanager
        def timed_step(meter, *args, **kwargs):
            self._begin_step()
            try:
                with meter_step(meter, *args, **kwargs):
                    yield
            finally:
                self._end_step()

        mpqbench.cost.CostMeter.step = timed_step
        evaluate = mpqbench.train.evaluate

        @functools.wraps(evaluate)
        def timed_evaluate(*args, **kwargs):
            self._eval_mode = True
            try:
                return evaluate(*args, **kwargs)
            finally:
                self._end_step()
                self._eval_mode = False

        for mod in (mpqbench.train, mpqbench.pipeline):
            mod.evaluate = timed_evaluate

    def _begin_step(self) -> None:
        n = len(self.step_s)
        if n == PROFILED_STEPS[0] and not self.profiling:
            t = time.perf_counter()
            self.prof.start()
            self.profiler_s += time.perf_counter() - t
            self.profiling = True
        self._step_start, self._phase_in_step = time.perf_counter(), 0.0

    def _end_step(self) -> None:
        if self._step_start is None:
            return
        self.step_s.append(time.perf_counter() - self._step_start - self._phase_in_step)
        self._step_start = None
        if len(self.step_s) == PROFILED_STEPS[1] and self.profiling:
            t = time.perf_counter()
            self.prof.stop()
            self.profiler_s += time.perf_counter() - t
            self.profiling = False


def _category_of_op(name: str) -> str | None:
    low = name.lower()
    if "lsq" in low:
        return "lsq"
    if "convolution" in low or "addmm" in low or low in ("aten::mm", "aten::linear") or "mmbackward" in low:
        return "conv"
    if "batch_norm" in low or "batchnorm" in low:
        return "bn"
    if low.startswith("optimizer.step#sgd") or low.startswith("optimizer.zero_grad"):
        return "optim"
    return None


def _categorise(events, window_s: float) -> dict[str, float]:
    """Seconds per category in the profiled window: self CPU time of each event, attributed to its nearest
    categorised ancestor; "python" = the window's wall time not inside any event."""
    out = dict.fromkeys(CATEGORIES[3:], 0.0)
    memo: dict[int, str | None] = {}

    def label(ev) -> str | None:
        key = id(ev)
        if key not in memo:
            cat = _category_of_op(ev.name)
            if cat is None and ev.cpu_parent is not None:
                cat = label(ev.cpu_parent)
            memo[key] = cat
        return memo[key]

    tracked = 0.0
    for ev in events:
        if ev.name.startswith("ProfilerStep"):
            continue
        s = ev.self_cpu_time_total / 1e6
        tracked += s
        out[label(ev) or "other ops"] += s
    out["python"] = max(0.0, window_s - tracked)
    return out


# ---- parent ------------------------------------------------------------------------------------------------
def _run(cmd: list[str], env: dict[str, str]) -> tuple[str, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    env = dict(env, MPQBENCH_PROFILE_T0=repr(t0))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return res.stdout, wall, cpu


def _make_inputs(work: Path, env: dict[str, str]) -> None:
    if not (work / "fp.pt").exists():
        print("making a small FP model (mpqbench pretrain, 3,000 images, 1 epoch) ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "mpqbench", "pretrain", "--arch", "resnet20", "--dataset", "fashion-mnist",
               "--input-size", "28", "--subset", "3000", "--epochs", "1", "--lr", "0.1", "--batch-size", "128",
               "--device", "cpu", "--no-progress", "--out", str(work / "fp.pt")]
        subprocess.run(cmd, env=env, check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "mpqbench-profile"))
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    _make_inputs(work, env)
    kinds = [k for k in args.jobs.split(",") if k]
    if ("finetune" in kinds or "evaluate" in kinds) and "search-asga" not in kinds \
            and not (work / "policy-asga.json").exists():
        kinds.insert(0, "search-asga")
    rows = {}
    for kind in kinds:
        out, wall, cpu = _run([sys.executable, __file__, "--child", *job_argv(kind, work)], env)
        rows[kind] = dict(json.loads(out.strip().splitlines()[-1]), wall_s=wall, cpu_s=cpu)
        print(f"{kind}: {wall:.1f} s", file=sys.stderr)
    import torch

    head = ["start", "import torch", "import mpqbench", *CATEGORIES, "first batch", "job", "wall", "cpu"]
    print(f"one thread, torch {torch.__version__}; seconds (share of the job)")
    print("| job | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for kind, r in rows.items():
        cells = [r["marks"]["start"], r["marks"]["import torch"], r["marks"]["import mpqbench"],
                 *(r["shares"][c] for c in CATEGORIES)]
        text = [f"{v:.2f} ({100 * v / r['job_s']:.0f}%)" for v in cells]
        fb = r["first_batch_s"]
        text += [f"{fb:.2f}" if fb is not None else "", f"{r['job_s']:.1f}", f"{r['wall_s']:.1f}",
                 f"{r['cpu_s']:.1f}"]
        print(f"| {kind} | " + " | ".join(text) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
