"""Checkpoints carry a sha256 of their tensors, verified on load; NaN/Inf weights are refused."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import save_file

from zeroseg.cli import main
from zeroseg.engine.checkpoint import (
    META_KEY,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    tensors_sha256,
)

TENSORS = {"w": torch.arange(12, dtype=torch.float32).view(3, 4), "b": torch.ones(3)}


def _flip_tensor_byte(path, offset_in_data: int) -> None:
    raw = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", raw[:8])[0]
    raw[8 + header_len + offset_in_data] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_inside_a_tensor_is_detected(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", TENSORS, {"step": 1})
    tensors, meta = load_checkpoint(path)
    assert meta == {"step": 1} and torch.equal(tensors["w"], TENSORS["w"])
    _flip_tensor_byte(path, 5)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value) == (
        f"{path} is corrupt: its tensors do not match the sha256 recorded when it was written "
        "(a damaged copy or disk?); restore it or retrain"
    )


def test_non_finite_weights_are_refused(tmp_path):
    path = save_checkpoint(
        tmp_path / "m.safetensors", {"w": torch.full((2, 2), float("nan")), "b": torch.ones(2)}, {}
    )
    with pytest.raises(CheckpointError, match=r"holds NaN or Inf values \(in w\): the run"):
        load_checkpoint(path)
    inf = save_checkpoint(tmp_path / "i.safetensors", {"b": torch.tensor([1.0, float("inf")])}, {})
    with pytest.raises(CheckpointError, match=r"\(in b\)"):
        load_checkpoint(inf)


def test_files_from_before_the_digest_still_load(tmp_path):
    path = tmp_path / "old.safetensors"
    save_file(dict(TENSORS), str(path), metadata={META_KEY: "{}"})
    assert torch.equal(load_checkpoint(path)[0]["b"], TENSORS["b"])


def test_digest_covers_names_dtypes_shapes_and_values():
    base = tensors_sha256(TENSORS)
    assert base == tensors_sha256({"b": torch.ones(3), "w": TENSORS["w"].clone()})
    assert base != tensors_sha256({**TENSORS, "b": torch.ones(3, dtype=torch.float64)})
    assert base != tensors_sha256({**TENSORS, "w": TENSORS["w"].view(4, 3)})
    assert base != tensors_sha256({"a": TENSORS["w"], "b": TENSORS["b"]})
    assert tensors_sha256({"x": torch.ones(2, dtype=torch.bfloat16)}) != tensors_sha256(
        {"x": torch.zeros(2, dtype=torch.bfloat16)}
    )


def test_cli_eval_of_a_corrupted_model_is_one_line(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "model.safetensors", TENSORS, {"method": "projection"})
    _flip_tensor_byte(path, 0)
    assert main(["eval", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"zeroseg: error: {path} is corrupt") and err.count("\n") == 1
