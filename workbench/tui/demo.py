"""Synthetic run directories, written exactly as the runner would, for tests, benchmarks and demos.

Figures follow a simple, visible pattern (losses fall, accuracies rise) so a screen can be
checked by eye; nothing is trained.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC: fixed so listings and snapshots are stable


def event_line(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":")) + "\n"


def run_events(variants: list[str], epochs: int, layers: int = 2, t0: float = T0, step: float = 1.0,
               attacks: tuple[str, ...] = (), ood: bool = False, progress_steps: int = 0) -> list[dict]:
    """The events of a whole run, without its last word (finished / failed / interrupted)."""
    t = t0
    events: list[dict[str, Any]] = [{"t": t, "type": "run_started", "recipe": "recipes/demo.toml",
                                     "run_dir": "", "variants": variants, "seed": 0, "version": "0",
                                     "resumed": False}]
    for v_index, variant in enumerate(variants):
        t += step
        events.append({"t": t, "type": "stage_started", "stage": "train", "variant": variant, "total": epochs})
        for epoch in range(1, epochs + 1):
            for s in range(1, progress_steps + 1):
                t += step / (progress_steps + 1)
                events.append({"t": t, "type": "progress", "stage": "train", "variant": variant, "step": s,
                               "total": progress_steps, "loss": 1.0 / s})
            t += step
            metrics = {"loss": 2.0 / epoch + 0.1 * v_index, "ce": 1.5 / epoch, "train_accuracy": 1 - 0.5 / epoch,
                       "test_accuracy": 0.9 - 0.4 / epoch - 0.05 * v_index, "lr": 0.001}
            for j in range(layers):
                metrics[f"dep_x/{j}"] = 0.5 / (epoch + j)
                metrics[f"dep_y/{j}"] = 0.2 + 0.1 * math.log(epoch + j)
            if ood:
                metrics["ood_loss"] = 0.3 / epoch
            events.append({"t": t, "type": "epoch", "stage": "train", "variant": variant, "epoch": epoch,
                           "epochs": epochs, "metrics": metrics})
        t += step
        events.append({"t": t, "type": "stage_finished", "stage": "train", "variant": variant, "seconds": step})
        events.append({"t": t, "type": "result", "variant": variant, "section": "utility",
                       "figures": {"test_accuracy": 0.9 - 0.05 * v_index}})
        for attack in attacks:
            events.append({"t": t, "type": "result", "variant": variant, "section": "attacks",
                           "figures": {attack: {"top1": 0.8 - 0.2 * v_index}}})
    return events


def variant_results(variants: list[str], attacks: tuple[str, ...] = (), ood: bool = False) -> list[dict]:
    results = []
    for v_index, variant in enumerate(variants):
        entry: dict[str, Any] = {"name": variant, "utility": {"test_accuracy": round(0.9 - 0.05 * v_index, 4)}}
        if attacks:
            entry["attacks"] = {a: {"top1": round(0.8 - 0.2 * v_index, 4), "top5": 0.95 - 0.1 * v_index,
                                    "knn_dist": 100.0 + 10 * v_index, "fid": 50.0 + v_index} for a in attacks}
        if ood:
            mean = {"fpr95": 0.5 - 0.1 * v_index, "auroc": 0.8 + 0.05 * v_index, "aupr_in": 0.7, "aupr_out": 0.7}
            entry["ood"] = {"score": "msp", "sets": {"noise": mean}, "mean": mean}
        results.append(entry)
    return results


def write_run(
    run_dir: Path,
    *,
    status: str = "finished",
    variants: tuple[str, ...] = ("none", "bido-hsic"),
    epochs: int = 5,
    attacks: tuple[str, ...] = (),
    ood: bool = False,
    pid: int | None = None,
    t0: float = T0,
    progress_steps: int = 0,
    picture: bool = False,
) -> Path:
    """A run directory in one of the states `workbench runs list` knows.

    `running` needs `pid` of a live process (the runner's, in real life); `corrupt` finishes
    but has garbage lines in the middle and a half-written last line.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    names = list(variants)
    events = run_events(names, epochs, t0=t0, attacks=attacks, ood=ood, progress_steps=progress_steps)
    end = events[-1]["t"] + 1
    (run_dir / "recipe.toml").write_text('title = "demo"\n[data]\nuse = "digits"\n')
    (run_dir / "run.json").write_text(json.dumps({"recipe_hash": "0" * 16, "source": "recipes/demo.toml",
                                                  "pid": pid if pid is not None else 999_999_999,
                                                  "started": t0}))
    lines = [event_line(e) for e in events]
    if status == "finished" or status == "corrupt":
        lines.append(event_line({"t": end, "type": "run_finished", "seconds": end - t0}))
        results = {"recipe": "recipes/demo.toml", "variants": variant_results(names, attacks, ood)}
        (run_dir / "results.json").write_text(json.dumps(results))
        for entry in results["variants"]:
            (run_dir / entry["name"]).mkdir(exist_ok=True)
            (run_dir / entry["name"] / "results.json").write_text(json.dumps(entry))
    elif status == "failed":
        lines.append(event_line({"t": end, "type": "run_failed", "error": "RunError: loss is NaN at epoch 3"}))
    elif status == "interrupted":
        lines.append(event_line({"t": end, "type": "run_interrupted", "message": "stopped by the user; resumable"}))
    if status == "corrupt":
        lines.insert(3, "{this is not json\n")
        lines.insert(5, "\x00\x00\x00\n")
        lines.append('{"t": 1, "type": "lo')  # half-written
    (run_dir / "events.jsonl").write_text("".join(lines))
    if picture:
        write_picture(run_dir / names[0] / "reconstructions" / "gmi.png")
    return run_dir


def write_picture(path: Path, size: int = 8) -> np.ndarray:
    """A small RGB gradient PNG (red across, green down); returns the pixels written."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.linspace(0, 255, size).astype(np.uint8)
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[:, :, 0] = x[None, :]
    pixels[:, :, 1] = x[:, None]
    pixels[:, :, 2] = 64
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(pixels).save(tmp)
    os.replace(tmp, path)
    return pixels


def append_events(run_dir: Path, events: list[dict[str, Any]]) -> None:
    with (Path(run_dir) / "events.jsonl").open("a", encoding="utf-8") as handle:
        for event in events:
            handle.write(event_line(event))
            handle.flush()
