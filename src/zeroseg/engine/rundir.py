"""A run directory's identity and ownership: the config it was started with, and who writes it.

Resuming reuses every finished stage and step checkpoint in a directory, which is only right when
the directory was started with the same resolved config. ``run.json`` records that config and its
hash; a run with another config is refused with the differing keys named (before, re-running
``train.lr=0.01`` into a finished run silently returned the old weights under the new settings).
A lock file (``fcntl.flock``, released by the kernel when the process dies, even by SIGKILL) stops
a second concurrent run into the same directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zeroseg.config import ConfigError
from zeroseg.engine.checkpoint import _atomic_write
from zeroseg.engine.lock import LOCK, DirectoryInUseError, hold_lock

RECORD = "run.json"
# Keys that change how often progress is saved or logged, never the weights: a resumed run may
# change them (e.g. to checkpoint more often after a crash).
CADENCE_KEYS = frozenset({"ckpt_every", "ckpt_minutes", "keep_ckpts", "log_every"})
# Options added after runs were recorded, each at the value that reproduces the code before it.
# At that value they are left out of every identity (run.json's hash, the demo's run
# fingerprints, shared stage keys, the foundation's and stage 0's pretraining keys), so adding an
# option keeps earlier runs reusable; set to anything else, they enter it.
NEUTRAL_DEFAULTS: dict[str, Any] = {
    "channels_last": False,
    "mask_scale": 1.0,
    "pseudo_seen": False,
    "backbone_lr_mult": 1.0,
    "self_train_backbone_lr_mult": 1.0,
    # the mask family's pooled classifier (session 39), off
    "pooled": {"enabled": False, "alpha": 0.4, "beta": 0.8},
    # the mask family's class loss on unmatched queries over unknown pixels (session 40), as before
    "skip_unknown_queries": False,
    # the projection head started from the foundation (session 40: False is an ablation)
    "foundation_head": True,
    # the projection head's text-side map kept as it starts (session 40: an ablation)
    "freeze_text_map": False,
    # ZegCLIP's decoder started as the foundation's pixel-name match (session 41), off
    "aligned_init": False,
    "aligned_scale": 20.0,
    # ZegCLIP's tuned head at the decoder's learning rate (session 42)
    "head_lr_mult": 1.0,
    "norm_tuning": False,
    # the projection head's hidden layer kept as the foundation's (session 42: projection-probe)
    "freeze_head_hidden": False,
    # the mask family's query classifier against the text embeddings as they are (session 43)
    "text_map": "none",
    # AlignZeg's virtual features mix any two seen classes' proposals (session 45: "things")
    "virtual_pairs": "all",
    # a training stage's weights as trained, no moving average (session 50)
    "ema_decay": 0.0,
    # AlignZeg's L_vir trains the class vectors it compares with (session 51: detached)
    "virtual_class_detach": False,
}


def without_neutral(obj: Any) -> Any:
    """``obj`` (nested dicts and lists) without the keys that hold their neutral default."""
    if isinstance(obj, dict):
        return {
            k: without_neutral(v)
            for k, v in obj.items()
            if not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])
        }
    if isinstance(obj, list):
        return [without_neutral(v) for v in obj]
    return obj


class RunDirError(ConfigError):
    """A run directory that belongs to another config, or that another run is writing."""


def identity_view(obj: Any) -> Any:
    """What of ``obj`` decides a run's identity: JSON-normalised (tuples as lists), without the
    cadence keys and the options at their neutral default."""
    obj = json.loads(json.dumps(obj, default=str))
    return without_neutral(without_cadence(obj))


def without_cadence(obj: Any) -> Any:
    """``obj`` (nested dicts and lists) without the checkpoint and log cadence keys, which do not
    change what a run or a stage trains."""
    if isinstance(obj, dict):
        return {k: without_cadence(v) for k, v in obj.items() if k not in CADENCE_KEYS}
    if isinstance(obj, list):
        return [without_cadence(v) for v in obj]
    return obj


def config_hash(resolved: dict) -> str:
    """sha256 of a resolved config (every default filled in), cadence keys and the demo row
    (which never changes a run) left out."""
    resolved = {k: v for k, v in resolved.items() if k != "demo"}
    blob = json.dumps(identity_view(resolved), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def config_diff(old: dict, new: dict) -> list[str]:
    """``["train.lr: 0.001 -> 0.01", ...]`` for every leaf key that differs."""
    a, b = _flatten(identity_view(old)), _flatten(identity_view(new))
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            show = lambda v: "(absent)" if v is missing else json.dumps(v, default=str)  # noqa: E731
            lines.append(f"{key}: {show(va)} -> {show(vb)}")
    return lines


def _has_contents(directory: Path) -> bool:
    return directory.is_dir() and any(p.name != LOCK for p in directory.iterdir())


OVERWRITE_ADVICE = "choose a new --out, or pass --overwrite to discard the old run"


def check_run_dir(
    directory: Path,
    resolved: dict,
    *,
    legacy_config: Callable[[], dict | None] | None = None,
    advice: str = OVERWRITE_ADVICE,
    canonical: Callable[[dict], dict] = lambda cfg: cfg,
) -> None:
    """Raises :class:`RunDirError` unless ``directory`` is new, empty, or started with this config.

    Args:
        resolved: the resolved config of the run about to start.
        legacy_config: for a directory written before ``run.json`` existed, returns the config
            recorded in its ``model.safetensors`` (adopted when it matches), or None.
        advice: what the error tells the user to do (default: for a run about to write there).
        canonical: applied to both configs before they are compared (the runner names the
            ShapeWorld world by its content, so another path to the same world resumes).
    """
    record = directory / RECORD
    if record.is_file():
        try:
            old_cfg = json.loads(record.read_text())["config"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise RunDirError(f"{record} is unreadable ({type(e).__name__}); {advice}") from None
    elif _has_contents(directory):
        old_cfg = legacy_config() if legacy_config is not None else None
        if old_cfg is None:
            raise RunDirError(
                f"{directory} holds files but no {RECORD} saying which config made them; {advice}"
            )
    else:
        return
    old_cfg, resolved = canonical(old_cfg), canonical(resolved)
    if config_hash(old_cfg) != config_hash(resolved):
        diff = config_diff(old_cfg, resolved)
        shown = "; ".join(diff[:8]) + (f"; ... ({len(diff)} keys in all)" if len(diff) > 8 else "")
        raise RunDirError(
            f"{directory} was started with another config ({shown}); resuming would mix the two: "
            f"{advice}"
        )


def write_record(directory: Path, resolved: dict) -> None:
    """Writes ``run.json`` (atomically): the resolved config and its hash."""
    record = {"config_hash": config_hash(resolved), "config": resolved}
    _atomic_write(
        directory / RECORD,
        lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2, sort_keys=True, default=str)),
    )


def clear_run_dir(directory: Path) -> None:
    """Deletes everything in ``directory`` but the lock (``--overwrite``)."""
    if not directory.is_dir():
        return
    for p in directory.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


@contextmanager
def run_lock(directory: Path) -> Iterator[None]:
    """Holds ``directory/.lock`` exclusively for the duration; a second holder fails at once
    (:class:`RunDirError`)."""
    try:
        with hold_lock(directory):
            yield
    except DirectoryInUseError as e:
        raise RunDirError(str(e)) from None
