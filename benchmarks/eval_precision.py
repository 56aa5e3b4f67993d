"""fp32 vs bfloat16 on the CPU, and evaluation against its FP forward floor, measured in one run.

A. Training steps (ResNet-20, 1×28×28, batch 128, SGD step, as benchmarks/quant_overhead.py): FP, QAT W3A3
   and the {2,3,4} supernet, each at fp32 and at bf16 (the forward under
   :func:`mpqbench.train.autocast_for`; quantizer steps and rounding in fp32, loss in fp32), interleaved;
   median seconds per step, the bf16/fp32 ratio per configuration and the ratio to FP at the same precision.
B. Evaluation of the 10,000 Fashion-MNIST test images (batch 128): the floor is the plain FP ResNet-20
   forward over the same batches (eval mode, no grad, the same loader); ``evaluate`` is
   :func:`mpqbench.train.evaluate` on the quantized model (weights quantized once per call), and
   ``evaluate, weights per batch`` the same with the weights quantized on every batch (the earlier way). Each
   at fp32 and bf16, interleaved over ``--rounds``; median seconds, ratio to the floor at the same precision,
   bf16/fp32.
C. With ``--ckpt/--policy/--fp`` (a fine-tuned checkpoint, its policy and FP checkpoint, as
   ``mpqbench evaluate`` takes them) B uses that model and prints its fp32 and bf16 top-1 and how many test
   predictions differ; without them B uses a randomly initialised, calibrated W3A3 model (speed only).

    python benchmarks/eval_precision.py [--threads 1] [--steps 8] [--rounds 3] [--skip-train]
                                        [--ckpt Q.pt --policy P.json --fp FP.pt]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import mpqbench.quant as quant  # noqa: E402
from mpqbench.data import load_split, make_loader  # noqa: E402
from mpqbench.models import fixed_layer_names, get_model, searchable_layer_names  # noqa: E402
from mpqbench.quant import build_supernet, quantize_model  # noqa: E402
from mpqbench.train import autocast_for, evaluate, tune_malloc  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def _median_times(fns: dict[str, callable], rounds: int, warmup: int = 1) -> dict[str, tuple[float, float]]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}


def train_steps(steps: int) -> None:
    torch.manual_seed(0)
    fp = get_model("resnet20", num_classes=10, in_channels=1, input_size=28)
    stem, fc = fixed_layer_names(fp)
    searchable = searchable_layer_names(fp)
    fixed = {stem: (8, 8), fc: (8, 8)}
    models = {"FP": fp,
              "QAT W3A3": quantize_model(copy.deepcopy(fp), {**fixed, **{n: (3, 3) for n in searchable}}),
              "supernet {2,3,4}": quantize_model(build_supernet(copy.deepcopy(fp), searchable, [2, 3, 4], [2, 3, 4]),
                                                 fixed)}
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    fns = {}
    for name, model in models.items():
        with torch.no_grad():
            model(x)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        for prec in PRECISIONS:
            def step(model=model, opt=opt, prec=prec) -> None:
                opt.zero_grad(set_to_none=True)
                with autocast_for("cpu", prec):
                    logits = model(x)
                F.cross_entropy(logits.float(), y).backward()
                opt.step()
            fns[f"{name} {prec}"] = step
    med = _median_times(fns, steps, warmup=3)
    print(f"A. training steps, 1x28x28, batch 128, median of {steps} (interleaved); cpu ms")
    print(f"{'config':<20}{'fp32':>9}{'bf16':>9}{'bf16/fp32':>11}{'x FP fp32':>11}{'x FP bf16':>11}")
    for name in models:
        a, b = med[f"{name} fp32"][1], med[f"{name} bf16"][1]
        print(f"{name:<20}{a * 1e3:>9.1f}{b * 1e3:>9.1f}{b / a:>11.2f}{a / med['FP fp32'][1]:>11.2f}"
              f"{b / med['FP bf16'][1]:>11.2f}")


def _models(args) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(FP model, quantized model) of the same FP weights."""
    if args.ckpt:
        from mpqbench.pipeline import load_checkpoint, quantized_model
        from mpqbench.policy import Policy

        fp_ckpt = load_checkpoint(Path(args.fp), "FP checkpoint")
        policy = Policy.load(Path(args.policy))
        qmodel = quantized_model(policy, fp_ckpt["meta"])
        qmodel.load_state_dict(load_checkpoint(Path(args.ckpt), "fine-tuned checkpoint")["state_dict"])
        fp = get_model(fp_ckpt["meta"]["arch"], num_classes=10, in_channels=1, input_size=28)
        fp.load_state_dict(fp_ckpt["state_dict"])
        return fp.eval(), qmodel.eval()
    torch.manual_seed(0)
    fp = get_model("resnet20", num_classes=10, in_channels=1, input_size=28).eval()
    stem, fc = fixed_layer_names(fp)
    q = quantize_model(copy.deepcopy(fp), {stem: (8, 8), fc: (8, 8), **{n: (3, 3) for n in searchable_layer_names(fp)}})
    with torch.no_grad():
        q.eval()(torch.randn(128, 1, 28, 28))
    return fp, q


def evaluation(args) -> None:
    test = load_split("fashion-mnist", "test", input_size=28)
    fp, q = _models(args)

    def floor(prec: str) -> None:
        with torch.no_grad():
            for x, _ in make_loader(test, batch_size=128, shuffle=False, seed=0):
                with autocast_for("cpu", prec):
                    fp(x)

    @contextlib.contextmanager
    def no_freeze(model):
        yield model

    results: dict[str, dict] = {}

    def run_eval(prec: str, per_batch: bool) -> None:
        real = quant.frozen_weights
        if per_batch:
            quant.frozen_weights = no_freeze
        try:
            results[(prec, per_batch)] = evaluate(q, test, batch_size=128, device="cpu", precision=prec)
        finally:
            quant.frozen_weights = real

    fns = {}
    for prec in PRECISIONS:
        fns[f"floor (FP forward) {prec}"] = lambda prec=prec: floor(prec)
        fns[f"evaluate {prec}"] = lambda prec=prec: run_eval(prec, False)
        fns[f"evaluate, weights per batch {prec}"] = lambda prec=prec: run_eval(prec, True)
    med = _median_times(fns, args.rounds, warmup=0)
    print(f"B. evaluation of {len(test)} Fashion-MNIST test images, batch 128, median of {args.rounds} "
          f"(interleaved); cpu s")
    print(f"{'config':<36}{'fp32':>8}{'bf16':>8}{'bf16/fp32':>11}{'x floor fp32':>14}{'x floor bf16':>14}")
    for name in ("floor (FP forward)", "evaluate", "evaluate, weights per batch"):
        a, b = med[f"{name} fp32"][1], med[f"{name} bf16"][1]
        fa, fb = med["floor (FP forward) fp32"][1], med["floor (FP forward) bf16"][1]
        print(f"{name:<36}{a:>8.2f}{b:>8.2f}{b / a:>11.2f}{a / fa:>14.2f}{b / fb:>14.2f}")
    if args.ckpt:
        f32, b16 = results[("fp32", False)], results[("bf16", False)]
        with torch.no_grad(), quant.frozen_weights(q):
            preds = {}
            for prec in PRECISIONS:
                out = []
                for x, _ in make_loader(test, batch_size=128, shuffle=False, seed=0):
                    with autocast_for("cpu", prec):
                        out.append(q(x).float().argmax(1))
                preds[prec] = torch.cat(out)
        differ = int((preds["fp32"] != preds["bf16"]).sum())
        print(f"C. {args.ckpt}: top-1 fp32 {f32['top1']:.2f} %, bf16 {b16['top1']:.2f} % "
              f"(difference {b16['top1'] - f32['top1']:+.2f} points); {differ} of {len(test)} predictions differ; "
              f"loss {f32['loss']:.4f} / {b16['loss']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per configuration")
    ap.add_argument("--rounds", type=int, default=3, help="timed evaluations per configuration")
    ap.add_argument("--skip-train", action="store_true", help="only part B (and C)")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--policy", default=None)
    ap.add_argument("--fp", default=None)
    args = ap.parse_args()
    if args.ckpt and not (args.policy and args.fp):
        ap.error("--ckpt needs --policy and --fp")
    torch.set_num_threads(args.threads)
    tune_malloc()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LSQ backend {quant.get_backend()}")
    if not args.skip_train:
        train_steps(args.steps)
    evaluation(args)


if __name__ == "__main__":
    main()
