"""Cost of one BiDO training step relative to a plain cross-entropy step, in one process.

    python benchmarks/bench_bido_step.py [--image-size 32] [--width 64] [--steps 30]

Times forward + backward + optimizer step of MCNN at batch 64 through the real defenses
(`none`, `bido` with hsic and coco), interleaving them so machine noise hits all alike, and
prints the median step time and the ratio to the plain step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from workbench import load_registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = load_registry()

    setups = {
        "none": {"use": "none"},
        "bido-hsic": {"use": "bido", "lambda_x": 0.05, "lambda_y": 0.5, "measure": {"use": "hsic"}},
        "bido-coco": {"use": "bido", "lambda_x": 1.0, "lambda_y": 50.0, "measure": {"use": "coco"}},
    }
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, 5, (args.batch,), generator=g)
    runs = {}
    for name, table in setups.items():
        torch.manual_seed(0)
        model = registry.create("backbone", "mcnn", width=args.width).build(5, 1, args.image_size)
        defense = registry.create_from("defense", table)
        runs[name] = (model, defense, torch.optim.Adam(model.parameters(), lr=1e-3))

    def step(name: str) -> float:
        model, defense, optimizer = runs[name]
        start = time.perf_counter()
        logits, hiddens = model.forward_hidden(x)
        out = defense.loss(x=x, y=y, logits=logits, hiddens=hiddens, model=model)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    for name in runs:  # warm-up
        for _ in range(3):
            step(name)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.steps):
        for name in runs:
            times[name].append(step(name))
    base = statistics.median(times["none"])
    print(f"MCNN width {args.width}, {args.image_size}x{args.image_size}, batch {args.batch}, "
          f"{args.threads} thread(s), median of {args.steps} steps")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<10} {median * 1e3:8.2f} ms/step   ratio to none {median / base:.3f}")


if __name__ == "__main__":
    main()
