"""The ShapeWorld foundation model: shipped weights, their sidecar, and loading them.

``zeroseg pretrain foundation`` (:mod:`zeroseg.foundation.train`) makes it from the captioned
web world (:mod:`zeroseg.foundation.web`); the result ships inside the package as
``shapeworld-foundation.safetensors`` (backbone + projection head only) with a JSON sidecar
holding the exact command, the config and its hash, the training time, the quality figures and
the sha256 of the weights file. Every ShapeWorld preset starts from it (``model.foundation:
shipped``), as the papers' methods start from CLIP or ImageNet weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zeroseg.config import ConfigError
from zeroseg.engine.checkpoint import CheckpointError, _atomic_write, load_state_dict_strict
from zeroseg.foundation.model import Foundation, FoundationModelConfig
from zeroseg.models.backbones.small import SmallUNetConfig

__all__ = [
    "SHIPPED",
    "Foundation",
    "FoundationModelConfig",
    "file_sha256",
    "foundation_identity",
    "load_foundation",
    "load_into",
    "read_sidecar",
    "write_foundation",
]

SHIPPED = Path(__file__).with_name("shapeworld-foundation.safetensors")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _resolve(name: str | Path | None) -> Path:
    """``shipped``/None: the packaged foundation; a bare name: a packaged ``<name>.safetensors``
    (e.g. ``shapeworld-foundation-exclude-default``); anything else: a file path."""
    if name in (None, "shipped"):
        return SHIPPED
    if isinstance(name, str) and "/" not in name and not name.endswith(".safetensors"):
        packaged = SHIPPED.with_name(f"{name}.safetensors")
        if packaged.is_file():
            return packaged
    return Path(name)


def read_sidecar(name: str | Path | None = None) -> dict:
    """The sidecar JSON of a foundation file (``shipped`` or None: the one in the package)."""
    path = _resolve(name)
    side = path.with_suffix(".json")
    if not path.is_file() or not side.is_file():
        raise FileNotFoundError(
            f"foundation weights {path} (and its sidecar {side.name}) not found; make them with: "
            "zeroseg pretrain foundation"
        )
    return json.loads(side.read_text())


def write_foundation(model: Foundation, path: Path, sidecar: dict) -> dict:
    """Writes the transferable weights and their sidecar (with the file's sha256), atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.transfer_state().items()}
    arch = json.dumps(dataclasses.asdict(model.cfg), sort_keys=True)
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"architecture": arch}))
    sidecar = {
        **sidecar,
        "architecture": dataclasses.asdict(model.cfg),
        "sha256": file_sha256(path),
    }
    text = json.dumps(sidecar, indent=2, sort_keys=True)
    _atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text + "\n"))
    for p in (path, path.with_suffix(".json")):
        p.chmod(0o644)  # a package data file, readable by every user
    return sidecar


def load_foundation(name: str | Path | None = None) -> Foundation:
    """The foundation of a file (``shipped``/None: the packaged one), checked against its sha256.

    Returns:
        A :class:`Foundation` in eval mode whose backbone and head hold the pretrained weights
        (the pretraining-only extras keep their initial values).
    """
    path = _resolve(name)
    sidecar = read_sidecar(path)
    digest = file_sha256(path)
    if digest != sidecar.get("sha256"):
        raise CheckpointError(
            f"foundation weights {path} have sha256 {digest[:16]}..., but their sidecar records "
            f"{str(sidecar.get('sha256'))[:16]}...: the file is damaged or not the one described"
        )
    arch = sidecar["architecture"]
    cfg = FoundationModelConfig(
        backbone=SmallUNetConfig(
            **{**arch["backbone"], "widths": tuple(arch["backbone"]["widths"])}
        ),
        embed_dim=arch["embed_dim"],
    )
    model = Foundation(cfg)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state = model.state_dict()
    state.update(tensors)
    missing = set(model.transfer_state()) - set(tensors)
    if missing:
        raise CheckpointError(f"foundation weights {path} lack {sorted(missing)[:5]}")
    load_state_dict_strict(model, state, what=f"foundation weights {path}")
    return model.eval()


def foundation_identity(name: str | Path | None = None) -> dict:
    """What a report says of the foundation a run started from: name, sha256, excluded names."""
    side = read_sidecar(name)
    return {
        "name": side.get("name", "shapeworld-foundation"),
        "sha256": side["sha256"],
        "excluded": side.get("excluded", []),
    }


def load_into(
    backbone: torch.nn.Module, head: torch.nn.Module | None, name: str | Path | None
) -> Foundation:
    """Copies a foundation's backbone (and head, when given) weights into a method's modules.

    Shapes must match exactly (strict): a method whose backbone config differs from the
    foundation's gets an error naming both, never a partial load.
    """
    found = load_foundation(name)
    parts = [("backbone", backbone, found.backbone)]
    if head is not None:
        parts.append(("head", head, found.head))
    for what, target, source in parts:
        try:
            load_state_dict_strict(target, source.state_dict(), what=f"the foundation's {what}")
        except CheckpointError as e:
            raise ConfigError(
                f"the method's {what} does not match the foundation's ({e}); use the "
                f"foundation's architecture {dataclasses.asdict(found.cfg)} or model.foundation: null"
            ) from None
    return found
