"""Wiring: config -> data, text embeddings, method -> trained model -> metrics and a saved checkpoint.

This is the one place that decides what a method may see: training data only through
:class:`~zeroseg.data.protocol.SeenOnly` (full labels only for the oracle), unlabelled training
images for transductive stages, class embeddings through the run context.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from zeroseg import __version__
from zeroseg.config import (
    ConfigError,
    ExperimentConfig,
    check_nested,
    from_dict,
    load_config,
    to_dict,
    validate_config,
)
from zeroseg.data.classes import ClassSplit
from zeroseg.data.loader import hflip
from zeroseg.data.protocol import SeenOnly
from zeroseg.engine import distributed as dist
from zeroseg.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from zeroseg.engine.inference import evaluate_semantic
from zeroseg.engine.rundir import check_run_dir, clear_run_dir, run_lock, write_record
from zeroseg.methods import METHODS
from zeroseg.methods.base import Method, RunContext
from zeroseg.metrics.boundary import BoundaryFScore
from zeroseg.metrics.semantic import SemanticEvaluator
from zeroseg.text.cache import cached_encode
from zeroseg.text.encoders import build_text_encoder


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``, checked against the devices this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name[5:]) if ":" in name else 0
        if index >= count:
            raise ConfigError(
                f"device {name!r} was requested but this machine has "
                f"{count or 'no'} CUDA device{'s' if count != 1 else ''}; use --device cpu "
                "(or device: auto)"
            )
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")


class ImagesOnly(torch.utils.data.Dataset):
    """Training images with every label removed (what transductive self-training may use)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        s = self.dataset[i]
        return {"image": s["image"], "id": s["id"]}


@dataclass
class Data:
    train: torch.utils.data.Dataset  # full labels: never handed to a zero-shot method as is
    val: torch.utils.data.Dataset
    split: ClassSplit
    world: object | None = None


def build_data(cfg: ExperimentConfig, *, progress: bool = True) -> Data:
    d = cfg.data
    if d.dataset == "shapeworld":
        from zeroseg.data.shapeworld import ShapeWorldDataset, load_spec

        spec = load_spec(d.world)
        train = ShapeWorldDataset(spec, "train", limit=d.train_limit, progress=progress)
        val = ShapeWorldDataset(spec, "val", limit=d.val_limit, progress=progress)
        return Data(train, val, spec.class_split(), spec)
    from zeroseg.data.real import build_real_dataset

    train, val, split = build_real_dataset(d)
    return Data(train, val, split)


class Embedder:
    """Class-name embeddings from the configured encoder, cached in memory and on disk."""

    def __init__(self, text_cfg, *, world=None, device: str = "cpu"):
        self.encoder_spec, self.templates = text_cfg.encoder, text_cfg.templates
        self.world = world
        self._encoder = None
        self._memo: dict[tuple[str, ...], torch.Tensor] = {}

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = build_text_encoder(self.encoder_spec, world=self.world)
        return self._encoder

    def __call__(self, names: Sequence[str]) -> torch.Tensor:
        key = tuple(names)
        if key not in self._memo:
            self._memo[key] = cached_encode(
                lambda: self.encoder, list(names), self.templates, name=self.cache_name
            )
        return self._memo[key]

    @property
    def cache_name(self) -> str:
        if self.encoder_spec == "attributes" and self.world is not None:
            return f"attributes-{self.world.content_key()}"
        return self.encoder_spec


def model_config(cfg: ExperimentConfig):
    """The method's own config dataclass, parsed from ``cfg.model`` (every key checked)."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; valid: {sorted(METHODS)}")
    return from_dict(METHODS[cfg.method].Config, cfg.model, where="model")


def build_method(cfg: ExperimentConfig, split: ClassSplit, embed_dim: int) -> Method:
    return METHODS[cfg.method](model_config(cfg), split=split, embed_dim=embed_dim)


MAX_MODEL_BYTES = 8 * 2**30  # 2G float32 values: 30x the largest preset (ResNet-101 DeepLab)


def check_model(
    cfg: ExperimentConfig, split: ClassSplit, embed_dim: int, *, where: str = "config"
) -> int:
    """Builds the method on the ``meta`` device (no memory, no time) to show that its ``model``
    settings can be built and fit in memory; a size typo (``model.backbone.out_dim=15296318``)
    fails here in one line instead of in the allocator.

    Returns:
        The number of weights (parameters and buffers).
    """
    try:
        # torch warns about zero-sized layers while building them; they are refused below.
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            probe = build_method(cfg, split, embed_dim)
    except ConfigError:
        raise
    except (RuntimeError, ValueError, TypeError, ZeroDivisionError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{where}: the model settings cannot be built: {first}") from None
    empty = [name for name, t in probe.named_parameters() if t.numel() == 0]
    if empty:
        raise ConfigError(
            f"{where}: the model settings give empty layers ({', '.join(empty[:3])}); "
            "check model.* sizes (0 is not a width)"
        )
    values = sum(t.numel() for t in [*probe.parameters(), *probe.buffers()])
    if values * 4 > MAX_MODEL_BYTES:
        raise ConfigError(
            f"{where}: the model settings give {values:,} weights ({values * 4 / 2**30:.0f} GiB "
            f"in float32), beyond the {MAX_MODEL_BYTES // 2**30} GiB bound; check model.* sizes"
        )
    return values


def build_method_checked(
    cfg: ExperimentConfig, split: ClassSplit, embed_dim: int, *, where: str = "config"
) -> Method:
    """:func:`build_method` after :func:`check_model`."""
    check_model(cfg, split, embed_dim, where=where)
    return build_method(cfg, split, embed_dim)


def check_config(cfg: ExperimentConfig, *, where: str = "config") -> dict:
    """Checks every value of ``cfg`` (the method's ``model`` section too) before work starts.

    Returns:
        The resolved config: ``to_dict(cfg)`` with ``model`` holding every method default, which
        is what decides the weights (its hash keys the run directory).
    """
    validate_config(cfg, where=where)
    if cfg.method not in METHODS:
        raise ConfigError(f"{where}: unknown method {cfg.method!r}; valid: {sorted(METHODS)}")
    model = from_dict(METHODS[cfg.method].Config, cfg.model, where=f"{where}: model")
    check_nested(model, where=where, key="model")
    return {**to_dict(cfg), "model": dataclasses.asdict(model)}


def _legacy_config(directory: Path) -> dict | None:
    """The resolved config recorded in a finished run's model, for directories from before
    ``run.json`` (None when there is none or it no longer parses)."""
    path = directory / "model.safetensors"
    if not path.is_file():
        return None
    try:
        _, meta = load_checkpoint(path)
        return check_config(from_dict(ExperimentConfig, meta["config"]))
    except (CheckpointError, ConfigError, KeyError, TypeError):
        return None


@dataclass
class TrainResult:
    method: Method
    data: Data
    embed: Embedder
    train_seconds: float
    notes: list[str]
    trained_stages: list[str]  # stages trained in this call; empty: all loaded from earlier runs


def train(
    cfg: ExperimentConfig,
    directory: Path,
    *,
    progress: bool = True,
    data: Data | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Trains ``cfg.method`` into ``directory`` and saves ``model.safetensors``.

    A directory started with the same resolved config resumes (finished stages are loaded, an
    interrupted stage continues from its newest step checkpoint); one started with another config
    is refused (:class:`zeroseg.engine.rundir.RunDirError`) unless ``overwrite`` discards it.
    A lock stops a second concurrent run into the same directory.
    """
    resolved = check_config(cfg)
    device = resolve_device(cfg.device)
    dist.init_from_env(device)
    directory = Path(directory)
    if not dist.is_main():
        dist.barrier()  # rank 0 checks and records the directory first
        return _train(cfg, directory, device, progress=progress, data=data)
    with run_lock(directory):
        if overwrite:
            clear_run_dir(directory)
        else:
            check_run_dir(directory, resolved, legacy_config=lambda: _legacy_config(directory))
        write_record(directory, resolved)
        dist.barrier()
        return _train(cfg, directory, device, progress=progress, data=data)


def _train(
    cfg: ExperimentConfig,
    directory: Path,
    device: torch.device,
    *,
    progress: bool,
    data: Data | None,
) -> TrainResult:
    torch.manual_seed(cfg.seed)
    data = data or build_data(cfg, progress=progress)
    embed = Embedder(cfg.text, world=data.world)
    method = build_method_checked(cfg, data.split, int(embed(data.split.names).shape[1]))
    if method.protocol == "supervised":
        train_set = data.train
    else:
        protocol = cfg.data.protocol
        train_set = SeenOnly(data.train, data.split, protocol)
    ctx = RunContext(
        cfg=cfg,
        directory=directory,
        split=data.split,
        train_set=train_set,
        train_images=ImagesOnly(data.train),
        embed=embed,
        device=device,
        progress=progress,
        world=data.world,
        train_transform=getattr(data.train, "train_transform", None) or hflip,
    )
    if isinstance(train_set, SeenOnly) and train_set.dropped:
        ctx.notes.append(
            f"strict protocol dropped {train_set.dropped} training images with unseen pixels"
        )
    t0 = time.perf_counter()
    method.to(device)
    method.fit(ctx)
    seconds = time.perf_counter() - t0
    method.eval()
    if dist.is_main():
        save_model(method, cfg, data.split, directory / "model.safetensors", notes=ctx.notes)
    dist.barrier()
    return TrainResult(method, data, embed, seconds, ctx.notes, ctx.trained)


def save_model(
    method: Method, cfg: ExperimentConfig, split: ClassSplit, path: Path, *, notes=()
) -> Path:
    meta = {
        "zeroseg_version": __version__,
        "method": method.name,
        "protocol": method.protocol,
        "config": to_dict(cfg),
        "split": split.to_dict(),
        "embed_dim": method.embed_dim,
        "notes": list(notes),
    }
    return save_checkpoint(path, method.state_dict(), meta)


def find_model(path: str | Path) -> Path:
    """The ``model.safetensors`` that ``path`` names: the file itself, the run directory holding
    it, or the ``--out`` directory given to ``zeroseg train`` (holding one run, ``OUT/<name>/``).
    """
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    runs = sorted(path.glob("*/model.safetensors"))
    if len(runs) == 1:
        return runs[0]
    if runs:
        listed = ", ".join(str(r.parent) for r in runs[:10])
        raise CheckpointError(f"{path} holds {len(runs)} trained runs ({listed}): name one")
    raise CheckpointError(
        f"{path} holds no model.safetensors (nor does any run directory inside it); "
        "has training finished?"
    )


def load_model(
    path: str | Path, *, device: str = "cpu", overrides: list[str] | None = None
) -> tuple[Method, ExperimentConfig, ClassSplit, dict]:
    """Rebuilds a method from a ``model.safetensors`` written by :func:`save_model` (strict).

    Args:
        path: the checkpoint, its run directory, or the ``--out`` of ``zeroseg train``.
        overrides: ``KEY=VALUE`` config changes applied before the method is built, so inference
            options (``model.calibration``, ``model.seen_reduction``, ``eval.*``, ``data.*``) take
            effect; a change to the architecture fails the strict load with the keys named.
    """
    path = find_model(path)
    tensors, meta = load_checkpoint(path)
    for key in ("method", "config", "split", "embed_dim"):
        if key not in meta:
            raise CheckpointError(f"{path} lacks {key!r}: it is not a zeroseg model checkpoint")
    cfg = from_dict(ExperimentConfig, meta["config"], where=f"{path}:config")
    if overrides:
        cfg = load_config(to_dict(cfg), list(overrides))
        if cfg.method != meta["method"]:
            raise CheckpointError(
                f"{path} holds a {meta['method']!r} model; an override cannot change the method "
                f"to {cfg.method!r}"
            )
    split = ClassSplit.from_dict(meta["split"])
    method = build_method_checked(cfg, split, int(meta["embed_dim"]), where=f"{path}: config")
    load_state_dict_strict(method, tensors, what=f"checkpoint {path}")
    method.to(resolve_device(device)).eval()
    return method, cfg, split, meta


def evaluate(
    method: Method,
    cfg: ExperimentConfig,
    dataset,
    split: ClassSplit,
    embed: Embedder,
    *,
    progress: bool = True,
    keep: int = 0,
    post=None,
    boundary: bool = True,
) -> tuple[dict, float, list[torch.Tensor]]:
    """Semantic metrics of a trained method on a labelled dataset (all classes in the vocabulary)."""
    device = next(method.parameters()).device
    emb = embed(split.names).to(device)
    seen_mask = torch.zeros(split.num_classes, dtype=torch.bool, device=device)
    seen_mask[list(split.seen)] = True
    evaluator = SemanticEvaluator(
        split.num_classes, split.seen, split.unseen, split.names, split.ignore_index
    )
    extras = (BoundaryFScore(ignore_index=split.ignore_index),) if boundary else ()
    method.eval()

    def fn(images):
        return method.scores(images.to(device), emb, seen_mask)

    return evaluate_semantic(
        fn,
        dataset,
        evaluator,
        cfg.eval,
        progress=progress,
        desc=f"eval {method.name}",
        keep=keep,
        post=post,
        extras=extras,
    )


def replace(cfg: ExperimentConfig, **changes) -> ExperimentConfig:
    return dataclasses.replace(cfg, **changes)
