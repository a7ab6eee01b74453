"""`workbench data list|show`: rows for every data component, file checks, one-line errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

import workbench
from workbench.cli.data import app

runner = CliRunner()


def test_list_json_has_every_data_component():
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    registry = workbench.load_registry()
    expected = {(kind, name) for kind in ("dataset", "ood_dataset") for name in registry.names(kind)}
    assert {(row["kind"], row["name"]) for row in rows} == expected
    by_name = {row["name"]: row for row in rows}
    assert by_name["digits"]["data"] == "embedded" and by_name["letters"]["data"] == "embedded"
    assert by_name["mnist"]["data"] == "real" and by_name["celeba-identities"]["kind"] == "ood_dataset"
    assert by_name["digits"]["plugin"] == "workbench_data"
    assert all(row["summary"] for row in rows)
    for name in (
        "digits",
        "mnist",
        "fashion-mnist",
        "cifar10",
        "image-folder",
        "celeba",
        "letters",
        "noise",
        "shapes",
        "digits-public",
        "svhn",
        "celeba-identities",
        "facescrub",
        "ffhq",
        "textures",
        "lsun",
        "isun",
        "places365",
        "tinyimages-300k",
    ):
        assert name in by_name


def test_list_table():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    assert "digits" in result.stdout and "tinyimages-300k" in result.stdout


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_show_marks_present_and_missing_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((1, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(1))
    result = runner.invoke(app, ["show", "mnist", "--root", str(tmp_path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    status = {name: line for line in lines for name in ("train-images", "t10k-images") if name in line}
    assert "present" in status["train-images"] and "missing" in status["t10k-images"]
    assert "2 missing" in result.stdout and "yann.lecun.com" in result.stdout
    assert "download" in result.stdout and "(required)" in result.stdout  # the params table


def test_show_without_root_lists_expected_files():
    result = runner.invoke(app, ["show", "celeba"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "identity_CelebA.txt" in result.stdout and "img_align_celeba/" in result.stdout
    assert "--root" in result.stdout


def test_show_embedded_and_param_defaults():
    result = runner.invoke(app, ["show", "noise"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "embedded" in result.stdout
    assert "'gaussian' | 'uniform'" in result.stdout and "distribution" in result.stdout


def test_show_unknown_name_is_one_line_exit_2():
    result = runner.invoke(app, ["show", "mnsit"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "unknown dataset or OOD set 'mnsit' (did you mean \"mnist\"?)" in result.stderr
