"""Checkpoints commit as one file: metadata and checksum in the safetensors header, verified on load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import TensorDataset

from workbench import load_registry
from workbench.recipe.schema import TrainConfig
from workbench.running.trainer import CHECKPOINT_NAME, train_classifier
from workbench.storage.checkpoint import CheckpointError, checkpoint_meta, load_checkpoint, save_checkpoint


def test_one_file_holds_tensors_and_metadata(tmp_path):
    path = tmp_path / "last.safetensors"
    tensors = {"model.w": torch.randn(3, 4), "half": torch.ones(2, dtype=torch.bfloat16),
               "scalar": torch.tensor(7), "empty": torch.zeros(0)}
    save_checkpoint(path, tensors, {"epoch": 3, "history": [{"loss": 0.5}]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]  # no sidecar, no temp file
    loaded, meta = load_checkpoint(path)
    assert meta == {"epoch": 3, "history": [{"loss": 0.5}]} and checkpoint_meta(path) == meta
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor) and loaded[name].dtype == tensor.dtype


def test_a_stale_sidecar_of_the_old_scheme_is_removed_and_never_read(tmp_path):
    path = tmp_path / "last.safetensors"
    (tmp_path / "last.json").write_text(json.dumps({"epoch": 99}))
    save_checkpoint(path, {"w": torch.ones(1)}, {"epoch": 2})
    assert not (tmp_path / "last.json").exists()
    (tmp_path / "last.json").write_text(json.dumps({"epoch": 99}))  # an older workbench wrote one later
    assert load_checkpoint(path)[1]["epoch"] == 2


def test_dying_during_a_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """The old scheme replaced tensors, then the sidecar: dying between the two paired epoch N
    tensors with epoch N-1 metadata. Now there is one rename; before it, the old file stands."""
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"w": torch.full((4,), 1.0)}, {"epoch": 1})

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # the process is stopped before the rename

    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": torch.full((4,), 2.0)}, {"epoch": 2})
    monkeypatch.undo()
    tensors, meta = load_checkpoint(path)
    assert meta["epoch"] == 1 and tensors["w"].tolist() == [1.0] * 4


WRITER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from workbench.storage.checkpoint import save_checkpoint
    path = Path(sys.argv[1])
    epoch = 0
    while True:
        epoch += 1
        save_checkpoint(path, {"w": torch.full((64, 64), float(epoch))}, {"epoch": epoch})
""")


def test_kill_9_at_any_moment_leaves_tensors_and_metadata_of_the_same_epoch(tmp_path):
    """A real process writing checkpoints as fast as it can, killed with SIGKILL three times."""
    path = tmp_path / "last.safetensors"
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        try:
            deadline = time.monotonic() + 60
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(delay)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        tensors, meta = load_checkpoint(path)
        assert meta["epoch"] >= 1
        assert torch.all(tensors["w"] == float(meta["epoch"]))


def _tiny_training(tmp_path, epochs: int, resume: bool = False, folder: str = "run"):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 1, 16, 16, generator=g)
    y = torch.arange(48) % 4
    registry = load_registry()
    torch.manual_seed(0)
    model = registry.create("backbone", "mcnn", width=4).build(4, 1, 16)
    result = train_classifier(model, registry.create("defense", "none"), TensorDataset(x, y),
                              TrainConfig(epochs=epochs, batch_size=16), device=torch.device("cpu"), seed=0,
                              checkpoint_dir=tmp_path / folder, resume=resume)
    return model, result


@pytest.mark.slow
def test_resume_follows_the_checkpoint_not_a_stale_last_json(tmp_path):
    """`last.json` saying epoch 99 (or 1) next to an epoch-2 checkpoint changes nothing: resume
    runs exactly the missing epoch and ends bit-identical to an uninterrupted run."""
    straight, _ = _tiny_training(tmp_path, epochs=3, folder="straight")
    _tiny_training(tmp_path, epochs=2)
    (tmp_path / "run" / "last.json").write_text(json.dumps({"epoch": 99, "history": []}))
    resumed, result = _tiny_training(tmp_path, epochs=3, resume=True)
    assert result.epochs_run == 1 and len(result.history) == 3
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)[1]["epoch"] == 3


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["tensor data", "metadata", "checksum", "header length"])
def test_a_flipped_bit_anywhere_is_refused_naming_the_file(tmp_path, where):
    path = tmp_path / "target.safetensors"
    save_checkpoint(path, {"model.w": torch.randn(32, 32)}, {"kind": "target", "epoch": 5})
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + header_len].decode()
    offset = {"tensor data": len(raw) - 5,
              "metadata": 8 + header.index('\\"epoch\\": 5') + len('\\"epoch\\": '),
              "checksum": 8 + header.index('"sha256":"') + len('"sha256":"') + 3,
              "header length": 1}[where]
    _flip(path, offset)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "--resume" in message


def test_a_renamed_tensor_key_is_caught_by_the_checksum(tmp_path):
    path = tmp_path / "target.safetensors"
    save_checkpoint(path, {"model.w": torch.ones(3)}, {"kind": "target"})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    tensors = load_file(str(path))
    save_file({"model.renamed": tensors["model.w"]}, str(path), metadata=header)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_a_file_without_a_checksum_is_refused_with_the_way_forward(tmp_path):
    path = tmp_path / "target.safetensors"
    save_file({"model.w": torch.ones(3)}, str(path))  # another tool, or workbench before checksums
    with pytest.raises(CheckpointError, match="cannot be verified.*--force"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint missing"):
        load_checkpoint(tmp_path / "nothing.safetensors")
