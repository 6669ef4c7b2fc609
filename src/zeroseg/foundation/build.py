"""``zeroseg pretrain foundation``: pretrain, measure, write (and optionally ship) the foundation."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from zeroseg.config import _set_path, from_dict, parse_overrides, to_dict
from zeroseg.foundation import SHIPPED, write_foundation
from zeroseg.foundation.train import FoundationConfig, foundation_report, train_foundation
from zeroseg.foundation.web import world_path
from zeroseg.paths import cache_dir
from zeroseg.pretrain import PROBE_STEPS
from zeroseg.report import cpu_info

# The benchmark worlds the sidecar's quality figures are measured on.
REPORT_WORLDS = ("default", "second")


def resolve_world(name: str):
    from zeroseg.data.shapeworld import load_spec

    return load_spec(world_path(name))


def foundation_config(
    overrides: list[str], *, exclude: str | None, web: str | None
) -> FoundationConfig:
    """The default config with ``key=value`` overrides (the same syntax as ``--set``)."""
    data = to_dict(FoundationConfig())
    for key, value in parse_overrides(overrides):
        _set_path(data, key, value)
    if exclude:
        world_path(exclude)  # fails early on a missing file
        data["exclude"] = exclude
    if web:
        data["web"] = web
    return from_dict(FoundationConfig, data, where="foundation config")


def pretrain_foundation(
    *,
    overrides: list[str],
    exclude: str | None = None,
    web: str | None = None,
    out: Path | None = None,
    ship: bool = False,
    report_worlds: list[str] | None = None,
    probe_images: int = 2000,
    probe_steps: int = PROBE_STEPS,
    command: str = "zeroseg pretrain foundation",
    progress: bool = True,
) -> dict:
    """Pretrains (resuming if interrupted) and writes ``OUT/shapeworld-foundation.safetensors``.

    Returns:
        The sidecar: command, config and hash, training seconds, quality figures, sha256.
    """
    cfg = foundation_config(overrides, exclude=exclude, web=web)
    out = out or cache_dir() / "foundation" / cfg.key()
    stage = out / "stage"
    print(f"[zeroseg] foundation {cfg.key()}: {out}")
    t0 = time.perf_counter()
    already = (stage / "final.safetensors").is_file()
    model = train_foundation(cfg, stage, progress=progress)
    seconds = time.perf_counter() - t0
    figures = {}
    for name in report_worlds or REPORT_WORLDS:
        spec = resolve_world(name)
        figures[name] = foundation_report(
            model,
            spec,
            text_encoder=cfg.text_encoder,
            templates=cfg.templates,
            train_images=probe_images,
            probe_steps=probe_steps,
        )
        zs = figures[name]["zero_shot"]
        print(
            f"[zeroseg] {name}: caption retrieval top-1 {figures[name]['retrieval_top1']:.1f}%  "
            f"zero-shot mIoU(S) {zs['seen_miou']:.1f} mIoU(U) {zs['unseen_miou']:.1f} "
            f"hIoU {zs['hiou']:.1f}  linear probe (seen) {figures[name]['linear_probe_seen_mIoU']:.1f}"
        )
    from zeroseg.engine.checkpoint import load_checkpoint

    _, meta = load_checkpoint(stage / "final.safetensors")
    sidecar = {
        "name": "shapeworld-foundation"
        + (f"-exclude-{Path(cfg.exclude).stem}" if cfg.exclude else ""),
        "command": command,
        "config": dataclasses.asdict(cfg),
        "config_hash": cfg.key(),
        "train_seconds": None if already else round(seconds, 1),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "cpu": cpu_info(),  # the weights (and sha256) repeat per CPU type and thread count
        "excluded": meta.get("excluded", []),
        "web_key": meta.get("web_key"),
        "quality": figures,
        "quality_split": "test (zero-shot, retrieval, probe scores); train (probe fit, seen pixels "
        "only); the probe's schedule was chosen on val",
    }
    log = stage / "log.csv"
    if log.is_file():  # the training loop's own wall time (a resumed run: its last segment)
        last = log.read_text().strip().splitlines()[-1].split(",")
        header = log.read_text().splitlines()[0].split(",")
        sidecar["train_seconds_logged"] = round(float(last[header.index("elapsed_s")]), 1)
        if already:
            sidecar["train_seconds"] = sidecar["train_seconds_logged"]
    path = out / SHIPPED.name
    sidecar = write_foundation(model, path, sidecar)
    print(f"[zeroseg] wrote {path} (sha256 {sidecar['sha256'][:16]}...)")
    if ship:  # the default foundation, or a named variant next to it (never over it)
        target = SHIPPED.with_name(f"{sidecar['name']}.safetensors")
        for src, dst in ((path, target), (path.with_suffix(".json"), target.with_suffix(".json"))):
            tmp = dst.parent / f".{dst.name}.tmp"
            shutil.copyfile(src, tmp)
            tmp.replace(dst)
        print(f"[zeroseg] shipped as {target}")
    return sidecar
