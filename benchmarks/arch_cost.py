"""What one training step and one evaluation batch cost per architecture and width, as a ratio to ResNet-20.

    python benchmarks/arch_cost.py [--widths 0.25,0.35,0.5,0.75,1.0] [--input-size 28] [--batch 128] [--repeats 5]

One thread (as the workflow's jobs), FP32, Fashion-MNIST geometry (1 channel, 10 classes) by default. For every
model: MACs per image (the project's counter), the median wall time of a training step (forward, backward, SGD
step) and of an inference batch over ``--repeats`` timed repetitions after two warm-up ones, and both as ratios
to ResNet-20 at width 1 measured in the same run. Used to choose the MobileNetV2 width of the
architecture suite (config/arch.yaml): the ratio times the ResNet-20 suite's job times estimates its cost.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


def timed(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    from mpqbench.cost import layer_macs
    from mpqbench.models import get_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="0.25,0.35,0.5,0.75,1.0")
    ap.add_argument("--input-size", type=int, default=28)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, args.input_size, args.input_size)
    y = torch.randint(0, 10, (args.batch,))
    models = [("resnet20", 1.0)] + [("mobilenet_v2", float(w)) for w in args.widths.split(",")]
    rows = []
    for arch, width in models:
        model = get_model(arch, num_classes=10, in_channels=1, width=width, input_size=args.input_size)
        macs = sum(layer_macs(model, input_size=args.input_size, in_channels=1).values())
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()

        def train_step():
            model.train()
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

        def eval_step():
            model.eval()
            with torch.inference_mode():
                model(x)

        rows.append((arch, width, macs, timed(train_step, args.repeats), timed(eval_step, args.repeats)))
    base = rows[0]
    print(f"one thread, batch {args.batch}, {args.input_size} px, 1 channel, 10 classes, median of {args.repeats}")
    print("| arch | width | MMACs/image | train step (s) | x ResNet-20 | eval batch (s) | x ResNet-20 |")
    print("|---|---|---|---|---|---|---|")
    for arch, width, macs, tr, ev in rows:
        print(f"| {arch} | {width:g} | {macs / 1e6:.1f} | {tr:.3f} | {tr / base[3]:.2f} | {ev:.3f} | {ev / base[4]:.2f} |")


if __name__ == "__main__":
    main()
