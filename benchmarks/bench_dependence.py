"""How much sharing kernel work across BiDO's terms saves: `python benchmarks/bench_dependence.py`.

Times the forward + backward of the BiDO regularizer
`λx Σ_j d(X, Z_j) − λy Σ_j d(Z_j, Y)` on one batch shaped like BiDO's MNIST setting at 16×16:
m = 64, X `[64, 1, 16, 16]` (d = 256), Y one-hot with 5 classes, and three hidden blocks
shaped like MCNN's at 16×16 input (each conv block halves the side): Z_1 `[64, 32, 8, 8]`
(2048), Z_2 `[64, 64, 4, 4]` (1024), Z_3 `[64, 128, 2, 2]` (512).

(a) per term, the authors' way: every `d(·, ·)` call recomputes both kernels, so X's kernel
    is built 3 times, Y's 3 times and each Z's twice (12 kernels, 12 solves for nHSIC).
(b) shared: `prepare_many([X, Z_1, Z_2, Z_3])` (one batched solve) and `prepare(Y)` once,
    then only `pair` per term (5 kernels, 2 solves).

Both run in this one process, interleaved, and the script prints median times and the ratio
(b)/(a) for `hsic` and `coco` (goal: ≤ 0.5). It also checks that both give the same loss.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from workbench import load_registry

BATCH = 64
CLASSES = 5
HIDDEN_SHAPES = ((32, 8, 8), (64, 4, 4), (128, 2, 2))
# BiDO's reference weights: CelebA VGG16 nHSIC (0.05, 0.5); MNIST MCNN COCO (1, 50).
WEIGHTS = {"hsic": (0.05, 0.5), "coco": (1.0, 50.0)}


def make_batch(device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor, list[Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(BATCH, 1, 16, 16, generator=generator)
    y = torch.nn.functional.one_hot(torch.randint(0, CLASSES, (BATCH,), generator=generator), CLASSES).float()
    hiddens = [torch.relu(torch.randn(BATCH, *shape, generator=generator)) for shape in HIDDEN_SHAPES]
    # Leaves standing in for the network's activations: the backward pass ends at them.
    return x.to(device), y.to(device), [z.to(device).requires_grad_() for z in hiddens]


def per_term_loss(
    measure, lambda_x: float, lambda_y: float
) -> Callable[[Tensor, Tensor, list[Tensor]], Tensor]:
    """(a): one full `d(a, b)` per term; the X–Z terms use the Gaussian on both sides."""
    kernel_a = measure.kernel_a

    def loss(x: Tensor, y: Tensor, hiddens: list[Tensor]) -> Tensor:
        total = x.new_zeros(())
        for z in hiddens:
            d_xz = measure.pair(measure.prepare(x, kernel_a), measure.prepare(z, kernel_a))
            d_zy = measure(z, y)
            total = total + lambda_x * d_xz - lambda_y * d_zy
        return total

    return loss


def shared_loss(
    measure, lambda_x: float, lambda_y: float
) -> Callable[[Tensor, Tensor, list[Tensor]], Tensor]:
    """(b): each variable prepared once (X with the hidden layers, one batched call)."""

    def loss(x: Tensor, y: Tensor, hiddens: list[Tensor]) -> Tensor:
        prepared_x, *prepared_hiddens = measure.prepare_many([x, *hiddens], measure.kernel_a)
        prepared_y = measure.prepare(y, measure.kernel_b)
        total = x.new_zeros(())
        for prepared_z in prepared_hiddens:
            d_xz = measure.pair(prepared_x, prepared_z)
            d_zy = measure.pair(prepared_z, prepared_y)
            total = total + lambda_x * d_xz - lambda_y * d_zy
        return total

    return loss


def time_step(loss_fn, x: Tensor, y: Tensor, hiddens: list[Tensor], device: torch.device) -> float:
    for z in hiddens:
        z.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    loss_fn(x, y, hiddens).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--repeats", type=int, default=50, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch's default)")
    args = parser.parse_args()

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    registry = load_registry()
    x, y, hiddens = make_batch(device)

    widths = ", ".join(f"{c}x{h}x{w}={c * h * w}" for c, h, w in HIDDEN_SHAPES)
    print(
        f"BiDO regularizer, forward+backward: m={BATCH}, X 1x16x16 (d=256), Y one-hot {CLASSES} classes, "
        f"Z {widths}"
    )
    print(
        f"device {device}, {torch.get_num_threads()} CPU threads, median of {args.repeats} steps after "
        f"{args.warmup} warm-up, (a) and (b) interleaved\n"
    )
    print(
        f"{'measure':<8} {'(a) per term':>14} {'(b) shared':>12} {'ratio b/a':>10}  {'goal':>6}  loss |a-b|/|a|"
    )
    for name, (lambda_x, lambda_y) in WEIGHTS.items():
        measure = registry.create("dependency", name, kernel_a="gaussian", kernel_b="linear", sigma=5.0)
        variants = {
            "a": per_term_loss(measure, lambda_x, lambda_y),
            "b": shared_loss(measure, lambda_x, lambda_y),
        }
        with torch.no_grad():
            loss_a, loss_b = (variants[key](x, y, hiddens).item() for key in "ab")
        times: dict[str, list[float]] = {"a": [], "b": []}
        for step in range(args.warmup + args.repeats):
            for key, loss_fn in variants.items():
                elapsed = time_step(loss_fn, x, y, hiddens, device)
                if step >= args.warmup:
                    times[key].append(elapsed)
        median_a, median_b = (statistics.median(times[key]) for key in "ab")
        ratio = median_b / median_a
        verdict = "met" if ratio <= 0.5 else "MISSED"
        mismatch = abs(loss_a - loss_b) / max(abs(loss_a), 1e-30)
        print(
            f"{name:<8} {median_a * 1e3:>11.2f} ms {median_b * 1e3:>9.2f} ms {ratio:>10.2f}  {verdict:>6}  "
            f"{mismatch:.1e}"
        )


if __name__ == "__main__":
    main()
