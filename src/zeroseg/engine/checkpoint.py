"""Checkpoints: safetensors tensors + JSON metadata, written atomically, loaded strictly.

A checkpoint is one ``.safetensors`` file whose header carries the metadata as JSON (under the key
``zeroseg``), plus a readable ``.json`` sidecar. Writes go to a temporary file in the same
directory, are fsync'ed and renamed into place, so a kill during a save never leaves a corrupt
file under the final name. Nothing is ever unpickled.

The header also carries a sha256 of every tensor (name, dtype, shape and bytes), checked on load,
so a flipped byte inside a tensor fails loudly instead of loading as a silently different model;
and floating-point tensors holding NaN or Inf are refused (a diverged run's weights score 0 without
a word otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

META_KEY = "zeroseg"
SHA_KEY = "zeroseg_sha256"  # header key of the tensors' digest (absent in files before it)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    return [
        k
        for k, v in tensors.items()
        if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all())
    ]


def save_checkpoint(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping) -> Path:
    """Writes tensors and metadata atomically; returns the path."""
    path = Path(path)
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # safetensors refuses tensors that share memory; clone those.
    seen_ptrs: set[int] = set()
    for k, v in flat.items():
        if v.numel() and v.data_ptr() in seen_ptrs:
            flat[k] = v.clone()
        seen_ptrs.add(flat[k].data_ptr())
    meta_json = json.dumps(meta, sort_keys=True, default=str)
    header = {META_KEY: meta_json, SHA_KEY: tensors_sha256(flat)}
    _atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=header))
    _atomic_write(
        path.with_suffix(".json"),
        lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str)),
    )
    return path


def _read(path: Path, *, tensors: bool) -> tuple[dict[str, str], dict[str, torch.Tensor], dict]:
    """The raw header, the tensors (empty unless ``tensors``) and the decoded zeroseg metadata."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            flat = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(
            f"{path} is not a readable safetensors checkpoint ({type(e).__name__}: {e})"
        ) from None
    if META_KEY not in header:
        raise CheckpointError(f"{path} has no zeroseg metadata: it was not written by zeroseg")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its metadata is corrupt ({e})") from None
    return header, flat, meta


def read_metadata(path: str | Path) -> dict:
    """A checkpoint's zeroseg metadata from its header, without reading its tensors."""
    return _read(Path(path), tensors=False)[2]


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Reads a zeroseg checkpoint; errors name the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    header, tensors, meta = _read(path, tensors=True)
    if SHA_KEY in header and tensors_sha256(tensors) != header[SHA_KEY]:
        raise CheckpointError(
            f"{path} is corrupt: its tensors do not match the sha256 recorded when it was "
            "written (a damaged copy or disk?); restore it or retrain"
        )
    bad = _non_finite(tensors)
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise CheckpointError(
            f"{path} holds NaN or Inf values (in {shown}): the run that wrote it diverged; "
            "retrain, e.g. with a lower train.lr or train.grad_clip"
        )
    return tensors, meta


def load_state_dict_strict(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, what: str
) -> None:
    """Loads a state dict, failing with every missing, unexpected and misshaped key named."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or misshaped:
        lines = [f"{what} does not match the model:"]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("misshaped", misshaped),
        ):
            if items:
                shown = ", ".join(items[:20]) + (
                    f", ... ({len(items)} in all)" if len(items) > 20 else ""
                )
                lines.append(f"  {title} keys: {shown}")
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(state, strict=True)


def prefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


# --- optimizer state as flat tensors + JSON -------------------------------------------------------


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{pid}/{k}"] = v
            else:
                scalars[f"{pid}/{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict] = {}
    pat = re.compile(r"optim/(\d+)/(.+)")
    for key, v in tensors.items():
        m = pat.fullmatch(key)
        if m:
            state.setdefault(int(m.group(1)), {})[m.group(2)] = v
    for key, v in meta.get("scalars", {}).items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def list_checkpoints(directory: Path) -> list[Path]:
    """Step checkpoints in a stage directory, oldest first."""
    return sorted(directory.glob("step-*.safetensors"))
