"""A disk cache of class-name embeddings keyed by (encoder, names, templates)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zeroseg.paths import cache_dir
from zeroseg.text.prompts import resolve_templates


def cache_key(encoder_name: str, names: Sequence[str], templates) -> str:
    blob = json.dumps([encoder_name, list(names), list(resolve_templates(templates))])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_encode(
    encoder,
    names: Sequence[str],
    templates=None,
    *,
    root: Path | None = None,
    name: str | None = None,
) -> torch.Tensor:
    """``encoder.encode(names, templates)``, read from / written to the cache.

    Args:
        encoder: a text encoder, or a zero-argument callable building one (so a cache hit
            never loads a model).
        name: the encoder's cache name (default ``encoder.name``; required for a callable).

    The cache is an optimisation only: a corrupt entry is recomputed and replaced.
    """
    name = name or encoder.name
    key = cache_key(name, names, templates)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40]
    path = (root or cache_dir()) / "text" / f"{safe}-{key}.safetensors"
    if path.is_file():
        try:
            emb = load_file(str(path))["embeddings"]
            if emb.shape[0] == len(names):
                return emb
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed below
            pass
    if callable(encoder) and not hasattr(encoder, "encode"):
        encoder = encoder()
    emb = encoder.encode(names, templates).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({"embeddings": emb}, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return emb
