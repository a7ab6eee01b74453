"""Training throughput and peak memory of none vs BiDO-HSIC vs BiDO-HSIC+ on CelebA-shaped data.

    python benchmarks/bench_gpu_throughput.py [--device cuda] [--images 8192] [--epochs 3]

Synthetic 64x64 RGB images over 1000 identities (the shape of the papers' CelebA setting,
recipes/celeba_vgg16_bido_plus.toml) train VGG16-BN through the real trainer, so on CUDA the
figures include bf16 autocast and channels-last. BiDO-HSIC uses the CelebA lambdas (0.05, 0.5);
BiDO-HSIC+ adds the entropy outlier-exposure term on synthetic auxiliary images (half a batch
each step, no warm-up). The first epoch warms up (cuDNN autotuning, allocator) and is not timed;
images/s counts in-distribution images per second of the median later epoch. All variants run
in this one process and the ratios to `none` are printed. On the CPU use small numbers, e.g.
`--device cpu --images 256 --batch 32 --epochs 2`.

Data parallel (the prepared GPU check of docs/distributed.md):

    python benchmarks/bench_gpu_throughput.py --ddp [--images 16384]

runs `none` and `bido-hsic` (bf16 autocast) on one GPU in this process, then on every visible
GPU through torchrun (DDP, BiDO's kernels on the all-gathered global batch), and prints
images/s, the scaling over one GPU and the BiDO/CE step-time ratio of each. Each GPU keeps the
papers' batch (`--batch`), so the global batch is `--batch` × GPUs and BiDO's kernels grow with
it. Without a GPU it says so and exits 0; `--ddp --cpu-smoke` runs a tiny version on two gloo
CPU processes instead, to check that the script works (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.data import TensorDataset

from workbench import load_registry
from workbench.recipe.schema import OODTrainingConfig, TrainConfig
from workbench.running.trainer import OODFeed, train_classifier

CLASSES = 1000
IMAGE_SIZE = 64


def synthetic(images: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(images, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return TensorDataset(x, torch.randint(0, CLASSES, (images,), generator=g))


def measure(name: str, defense_table: dict, ood: bool, args, registry, data_parallel: bool = False) -> dict[str, float]:
    from workbench.running import distributed

    device = torch.device(args.device)
    if device.type == "cuda" and data_parallel:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    world = distributed.world_size() if data_parallel else 1
    torch.manual_seed(0)
    model = registry.create("backbone", "vgg16-bn").build(CLASSES, 3, IMAGE_SIZE)
    defense = registry.create_from("defense", defense_table)
    model = defense.prepare_model(model, CLASSES)
    feed = None
    if ood:
        config = OODTrainingConfig(dataset={"use": "noise", "role": "auxiliary"}, loss="entropy")
        feed = OODFeed(dataset=synthetic(args.images // 2, seed=1), config=config,
                       loss=registry.create("ood_loss", "entropy", gamma=1e-3))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch * world,
                         optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4})
    stamps: list[float] = []

    def emit(type: str, **fields) -> None:
        if type == "epoch":
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    stamps.append(time.perf_counter())
    train_classifier(model, defense, synthetic(args.images, seed=0), config, device=device, seed=0, ood=feed,
                     emit=emit, data_parallel=data_parallel)
    epoch_seconds = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][1:]  # epoch 1 warms up
    seconds = statistics.median(epoch_seconds)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"images_per_s": args.images / seconds, "epoch_s": seconds, "peak_gib": peak}


DDP_VARIANTS = {
    "none": {"use": "none"},
    "bido-hsic": {"use": "bido", "lambda_x": 0.05, "lambda_y": 0.5, "measure": {"use": "hsic"}},
}


def ddp_worker(args) -> None:
    """One torchrun rank: both variants data-parallel; rank 0 prints one line per variant."""
    from workbench.running import distributed

    distributed.setup()
    registry = load_registry()
    for name, table in DDP_VARIANTS.items():
        figures = measure(name, table, False, args, registry, data_parallel=True)
        if distributed.is_main_process():
            print(f"RESULT {name} {figures['images_per_s']:.3f} {figures['peak_gib']:.3f}", flush=True)
    distributed.shutdown()


def ddp_comparison(args) -> None:
    """One GPU in this process, then all of them through torchrun; images/s and BiDO/CE ratios."""
    if args.cpu_smoke:
        args.device, args.images, args.batch, args.epochs, gpus = "cpu", 64, 8, 2, 2
        where = "2 gloo CPU processes (smoke test: the figures mean nothing)"
    elif not torch.cuda.is_available():
        print("no CUDA GPU visible: the data-parallel throughput comparison needs GPUs, so nothing was measured "
              "(--ddp --cpu-smoke checks the script on two CPU processes)")
        return
    else:
        gpus = torch.cuda.device_count()
        where = f"{gpus} × {torch.cuda.get_device_name(0)}"
    registry = load_registry()
    print(f"VGG16-BN, {IMAGE_SIZE}x{IMAGE_SIZE} RGB, {CLASSES} classes, {args.batch} images per device per step, "
          f"{args.images} images/epoch, bf16 autocast on CUDA, median of epochs 2-{args.epochs}")
    one = {n: measure(n, t, False, args, registry) for n, t in DDP_VARIANTS.items()}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus),
               __file__, "--ddp-worker", "--device", args.device, "--images", str(args.images),
               "--batch", str(args.batch), "--epochs", str(args.epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "LOGLEVEL": "ERROR"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"the torchrun part failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    many = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            _, name, rate, peak = line.split()
            many[name] = {"images_per_s": float(rate), "peak_gib": float(peak)}
    for label, figures, devices in (("1 device", one, 1), (where, many, gpus)):
        ratio = figures["none"]["images_per_s"] / figures["bido-hsic"]["images_per_s"]
        print(f"{label}: global batch {args.batch * devices}")
        for name, f in figures.items():
            scale = f["images_per_s"] / one[name]["images_per_s"]
            print(f"  {name:<10} {f['images_per_s']:9.0f} images/s  (×{scale:.2f} over 1 device)  "
                  f"peak memory {f['peak_gib']:.2f} GiB per device")
        print(f"  BiDO/CE step-time ratio {ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=8192, help="synthetic training images per epoch")
    parser.add_argument("--batch", type=int, default=64, help="the papers' batch size")
    parser.add_argument("--epochs", type=int, default=3, help="at least 2: the first is not timed")
    parser.add_argument("--ddp", action="store_true", help="1 GPU vs all visible GPUs (torchrun), none vs bido-hsic")
    parser.add_argument("--cpu-smoke", action="store_true", help="with --ddp: a tiny run on 2 CPU processes (gloo)")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)  # a torchrun rank
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch warms up and is not timed")
    if args.ddp_worker:
        ddp_worker(args)
        return
    if args.ddp:
        ddp_comparison(args)
        return
    registry = load_registry()
    hsic = {"use": "bido", "lambda_x": 0.05, "lambda_y": 0.5, "measure": {"use": "hsic"}}
    variants = {
        "none": ({"use": "none"}, False),
        "bido-hsic": (hsic, False),
        "bido-hsic+": (hsic, True),
    }
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"VGG16-BN, {IMAGE_SIZE}x{IMAGE_SIZE} RGB, {CLASSES} classes, batch {args.batch}, "
          f"{args.images} images/epoch, median of epochs 2-{args.epochs}, on {name}")
    figures = {n: measure(n, table, ood, args, registry) for n, (table, ood) in variants.items()}
    base = figures["none"]
    for n, f in figures.items():
        print(f"  {n:<11} {f['images_per_s']:9.0f} images/s  ({f['epoch_s']:.2f} s/epoch, "
              f"throughput ratio to none {f['images_per_s'] / base['images_per_s']:.3f})  "
              f"peak memory {f['peak_gib']:.2f} GiB (ratio {f['peak_gib'] / base['peak_gib']:.2f})")


if __name__ == "__main__":
    main()
