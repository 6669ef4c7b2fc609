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
from zeroseg.engine.inference import evaluate_semantic, inference_layout, scored_whole
from zeroseg.engine.rundir import check_run_dir, clear_run_dir, run_lock, write_record
from zeroseg.methods import METHODS
from zeroseg.methods.base import (
    OWN_CALIBRATION_FIELDS,
    Method,
    RunContext,
    Stage,
    revision_key,
    subtract_seen,
)
from zeroseg.metrics.bootstrap import ImageConfusions
from zeroseg.metrics.boundary import BoundaryFScore
from zeroseg.metrics.calibration import GAMMAS, CalibrationSweep, ausuc, choose_gamma
from zeroseg.metrics.calibration import RULE as CALIBRATION_RULE
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
    """The splits of one dataset (docs/methods.md, "Splits").

    Attributes:
        train: full labels: never handed to a zero-shot method as is.
        val: where every choice is made (calibration, hyperparameters, schedule length).
        test: the reported split, read by nothing else.
        split: the class split.
        world: the ShapeWorld spec (None for real data).
    """

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    test: torch.utils.data.Dataset | None  # None: a val-only run (build_data(test=False))
    split: ClassSplit
    world: object | None = None

    def eval_split(self, name: str) -> torch.utils.data.Dataset:
        """The labelled evaluation split ``name`` ("val" or "test")."""
        if name not in ("val", "test"):
            raise ValueError(f"unknown evaluation split {name!r}; valid: val, test")
        if name == "test" and self.test is None:
            raise ValueError("the test split was not loaded: this run reads val only")
        return self.val if name == "val" else self.test


def build_data(cfg: ExperimentConfig, *, progress: bool = True, test: bool = True) -> Data:
    """The train/val/test splits of ``cfg.data``; ``data.val_limit`` caps both val and test.

    ``test=False`` leaves the test split out (``Data.test`` is None; a ShapeWorld test split is
    not even opened): a run that reports ``val``, for a choice, cannot read the reported split."""
    d = cfg.data
    if d.dataset == "shapeworld":
        from zeroseg.data.shapeworld import ShapeWorldDataset, load_spec

        spec = load_spec(d.world)
        train = ShapeWorldDataset(spec, "train", limit=d.train_limit, progress=progress)
        val = ShapeWorldDataset(spec, "val", limit=d.val_limit, progress=progress)
        held = (
            ShapeWorldDataset(spec, "test", limit=d.val_limit, progress=progress) if test else None
        )
        return Data(train, val, held, spec.class_split(), spec)
    from zeroseg.data.real import build_real_dataset

    train, val, held, split = build_real_dataset(d)
    return Data(train, val, held if test else None, split)


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
    return from_dict(method_class(cfg).Config, cfg.model, where="model")


def method_class(cfg: ExperimentConfig, *, where: str = "config") -> type[Method]:
    """The registered class of ``cfg.method``; an unknown name lists the valid ones."""
    if cfg.method not in METHODS:
        raise ConfigError(f"{where}: unknown method {cfg.method!r}; valid: {sorted(METHODS)}")
    return METHODS[cfg.method]


def load_experiment(
    source: str | Path | dict | None = None, overrides: Sequence[str] | None = None
) -> ExperimentConfig:
    """:func:`zeroseg.config.load_config`, where an override may also name a schedule by its
    stage: ``stages.<stage>.<key>=<value>`` sets ``<key>`` of that stage's schedule
    (:attr:`Method.stages`), e.g. ``stages.generator.iters=500`` is ZS3Net's
    ``model.generator_train.iters=500`` and ``stages.segmenter.iters=500`` its ``train.iters=500``.

    Raises:
        ConfigError: a stage the config's method does not have (the message lists its stages),
            a stage override without a key, or a key its schedule does not have.
    """
    overrides = list(overrides or [])
    staged = [o for o in overrides if "=" in o and o.strip().startswith("stages.")]
    if not staged:
        return load_config(source, overrides)
    # The method may itself be set by an override: read it with every other override applied.
    plain = [o for o in overrides if o not in staged]
    cls = method_class(load_config(source, plain))
    rewritten = []
    for item in overrides:
        if item in staged:
            key, value = item.split("=", 1)
            _, name, *rest = key.strip().split(".")
            if not rest:
                raise ConfigError(
                    f"override {item!r} must look like stages.<stage>.<key>=<value>, e.g. "
                    f"stages.{cls.stages[0].name}.iters=100"
                )
            try:
                stage = cls.stage(name)
            except ConfigError as e:
                raise ConfigError(f"override {item!r}: {e}") from None
            item = f"{stage.schedule}.{'.'.join(rest)}={value}"
        rewritten.append(item)
    cfg = load_config(source, rewritten)
    model_config(cfg)  # a misspelt key of a stage's schedule fails here, naming the schedule
    return cfg


def stage_schedule(cfg: ExperimentConfig, stage: Stage):
    """The ``TrainConfig`` of ``stage`` in ``cfg``, method defaults filled in."""
    if stage.schedule == "train":
        return cfg.train
    value = model_config(cfg)
    for part in stage.schedule.removeprefix("model.").split("."):
        value = getattr(value, part)
    return value


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
    model = from_dict(method_class(cfg, where=where).Config, cfg.model, where=f"{where}: model")
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


def world_by_content(resolved: dict) -> dict:
    """``resolved`` with a ShapeWorld run's ``data.world`` (the spec's path as typed, or None for
    the default world) replaced by the spec's content key, so that a run directory resumes when
    the same world is named another way (relative or absolute, a copy). A spec that no longer
    reads stays named by its path."""
    from zeroseg.data.shapeworld import SpecError, load_spec

    data = resolved.get("data")
    if not isinstance(data, dict) or data.get("dataset") != "shapeworld":
        return resolved
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said when the run loaded it
            key = load_spec(data.get("world")).content_key()
    except SpecError:
        return resolved
    return {**resolved, "data": {**data, "world": f"the world of content key {key}"}}


@dataclass
class TrainResult:
    method: Method
    data: Data
    embed: Embedder
    train_seconds: float
    notes: list[str]
    trained_stages: list[str]  # stages trained in this call; empty: all loaded from earlier runs
    protocol_detail: dict  # what the row used (protocol_detail); docs/methods.md, "Protocols"


def train(
    cfg: ExperimentConfig,
    directory: Path,
    *,
    progress: bool = True,
    data: Data | None = None,
    overwrite: bool = False,
    reuse_from: Path | None = None,
) -> TrainResult:
    """Trains ``cfg.method`` into ``directory`` and saves ``model.safetensors``.

    A directory started with the same resolved config resumes (finished stages are loaded, an
    interrupted stage continues from its newest step checkpoint); one started with another config,
    or by the method's code at another :attr:`~zeroseg.methods.base.Method.revision`, is refused
    (:class:`zeroseg.engine.rundir.RunDirError`) unless ``overwrite`` discards it.
    A lock stops a second concurrent run into the same directory.

    ``reuse_from``: the same run in another output (``zeroseg demo --stages-from``; one process):
    its finished stages, and the shared stages finished beside it, are copied into ``directory``
    instead of trained (:meth:`RunContext.adopt_stage`). It must have been started with this
    config; it is only read.
    """
    # a code change that alters the weights: runs of older code are not this config's
    resolved = {**check_config(cfg), **revision_key(method_class(cfg).revision)}
    device = resolve_device(cfg.device)
    dist.init_from_env(device)
    directory = Path(directory)
    if not dist.is_main():
        dist.barrier()  # rank 0 checks and records the directory first
        return _train(cfg, directory, device, progress=progress, data=data)
    if reuse_from is not None:
        reuse_from = Path(reuse_from)
        check_run_dir(
            reuse_from,
            resolved,
            legacy_config=lambda: _legacy_config(reuse_from),
            canonical=world_by_content,
            advice="its stages are not this run's: give --stages-from a demo output of the same "
            "settings",
        )
    with run_lock(directory):
        if overwrite:
            clear_run_dir(directory)
        else:
            check_run_dir(
                directory,
                resolved,
                legacy_config=lambda: _legacy_config(directory),
                canonical=world_by_content,
            )
        write_record(directory, resolved)
        dist.barrier()
        return _train(cfg, directory, device, progress=progress, data=data, reuse_from=reuse_from)


def _train(
    cfg: ExperimentConfig,
    directory: Path,
    device: torch.device,
    *,
    progress: bool,
    data: Data | None,
    reuse_from: Path | None = None,
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
        revision=method.revision,
        reuse_from=reuse_from,
    )
    ctx.adopt_own_stages()
    if isinstance(train_set, SeenOnly) and train_set.dropped:
        ctx.notes.append(
            f"strict protocol dropped {train_set.dropped} training images with unseen pixels"
        )
    t0 = time.perf_counter()
    method.to(device)
    method.fit(ctx)
    seconds = time.perf_counter() - t0
    if ctx.adopted:
        names = ", ".join(p.name for p in ctx.adopted)
        ctx.notes.append(f"stages copied from {reuse_from} and beside it (--stages-from): {names}")
    method.eval()
    detail = protocol_detail(method, ctx)
    if dist.is_main():
        save_model(
            method,
            cfg,
            data.split,
            directory / "model.safetensors",
            notes=ctx.notes,
            protocol_detail=detail,
        )
    dist.barrier()
    inference_layout(method, cfg.eval)
    return TrainResult(method, data, embed, seconds, ctx.notes, ctx.trained, detail)


def protocol_detail(method: Method, ctx: RunContext) -> dict:
    """What a trained row used, in the words of docs/methods.md ("Protocols").

    ``training_labels``: which pixel labels training read; ``unseen_names``: the training stages
    that used unseen class names (empty: test time only); ``captioned_encoder``: the pretrained
    image-text encoders it starts from and whether their captions name unseen classes
    (CLIP-like); ``unlabelled_images``: whether it used the unlabelled training images
    (transductive). Recorded by the method while it ran, also for stages loaded from disk.
    """
    if method.protocol == "supervised":
        labels = "every class (supervised upper bound, not zero-shot)"
    elif ctx.cfg.data.protocol == "strict":
        labels = "seen classes only; images with any unseen pixel dropped (strict)"
    else:
        labels = "seen classes only; unseen pixels ignored (ignore)"
    return {
        "category": method.protocol,
        "training_labels": labels,
        "unseen_names": list(ctx.unseen_name_stages),
        "captioned_encoder": list(ctx.encoders),
        "clip_like": any(e.get("captions_name_unseen") for e in ctx.encoders),
        "unlabelled_images": method.protocol == "transductive",
    }


def save_model(
    method: Method,
    cfg: ExperimentConfig,
    split: ClassSplit,
    path: Path,
    *,
    notes=(),
    protocol_detail: dict | None = None,
) -> Path:
    meta = {
        "zeroseg_version": __version__,
        "method": method.name,
        "protocol": method.protocol,
        "protocol_detail": protocol_detail,
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
    inference_layout(method.to(resolve_device(device)).eval(), cfg.eval)
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
    gamma: float | None = None,
    seen_only: bool = False,
    sweep: CalibrationSweep | None = None,
    image_confusions: ImageConfusions | None = None,
) -> tuple[dict, float, list[torch.Tensor]]:
    """Semantic metrics of a trained method on a labelled dataset (all classes in the vocabulary).

    Args:
        gamma: ``None``: the method's own scores (its config's test-time constants); a number:
            the shared calibration rule at that ``gamma`` (:meth:`Method.calibrated_scores`).
        seen_only: unseen classes never win a pixel (each pixel gets its best seen class).
        sweep: also feed each batch's probabilities before calibration to this sweep (the AUSUC
            curve), from the same forward pass as the calibrated prediction. Needs ``gamma``, no
            ``post`` or ``seen_only``, and a method whose calibrated scores are the shared rule's
            subtraction itself (:func:`one_pass_calibration`). Every image is then scored whole
            (no tiles above :data:`~zeroseg.engine.inference.WHOLE_MAX`: see
            :func:`~zeroseg.engine.inference.scored_whole`).
        image_confusions: also fill this with each image's confusion matrix of the predictions
            scored (for :func:`zeroseg.metrics.bootstrap.paired_gap_interval`).
    """
    if sweep is not None and (
        gamma is None or post is not None or seen_only or not one_pass_calibration(method)
    ):
        raise ValueError(
            f"evaluate: a sweep needs gamma, no post or seen_only, and a method calibrated by the "
            f"rule's subtraction alone ({method.name})"
        )
    device = next(method.parameters()).device
    emb = embed(split.names).to(device)
    seen_mask = split.seen_mask().to(device)
    evaluator = SemanticEvaluator(
        split.num_classes, split.seen, split.unseen, split.names, split.ignore_index
    )
    extras = (BoundaryFScore(ignore_index=split.ignore_index),) if boundary else ()
    if image_confusions is not None:
        extras = (*extras, image_confusions)
    method.eval()

    def fn(images):
        if gamma is None:
            scores = method.scores(images.to(device), emb, seen_mask)
        elif sweep is not None:  # the probabilities; post_sweep calibrates them
            scores = method.calibration_scores(images.to(device), emb, seen_mask)
        else:
            scores = method.calibrated_scores(images.to(device), emb, seen_mask, gamma)
        if seen_only:
            return scores.masked_fill(~seen_mask[None, :, None, None], float("-inf"))
        return scores

    swept = {"seconds": 0.0, "images": 0}

    def post_sweep(probs, batch):
        t = time.perf_counter()
        sweep.process(probs, batch["label"])
        swept["seconds"] += time.perf_counter() - t
        swept["images"] += len(probs)
        return subtract_seen(probs, seen_mask, gamma).argmax(1)  # as Method.calibrated_scores

    metrics, spi, kept = evaluate_semantic(
        fn,
        dataset,
        evaluator,
        cfg.eval,
        progress=progress,
        desc=f"eval {method.name}",
        keep=keep,
        post=post_sweep if sweep is not None else post,
        extras=extras,
    )
    if swept["images"]:  # the seconds per image are the prediction's, not the sweep's
        spi -= swept["seconds"] / swept["images"]
    return metrics, spi, kept


def evaluate_seen(
    method: Method,
    cfg: ExperimentConfig,
    data: Data,
    embed: Embedder,
    *,
    eval_split: str = "val",
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """A fit check over the seen classes alone, on any split, the training images included.

    Each pixel gets the seen class with the highest score (the method's own scores, every class
    in the vocabulary; unseen classes cannot win), and only pixels whose label is a seen class
    count. The images are seen through the protocol (:class:`SeenOnly`; on ``train`` the run's
    own protocol, as the method trained on them), so no unseen label is read and the figures
    have no unseen side. Comparing ``train`` with ``val`` tells a model that cannot fit its seen
    classes (both low) from one that does not generalise (``train`` high, ``val`` low). No
    calibration: a shift of the seen scores does not change which seen class wins.

    Args:
        eval_split: ``train``, ``val`` or ``test``.
        limit: the first ``limit`` images of the split (all when None).

    Returns:
        ``seen_miou``, ``pixel_acc`` (over seen pixels) and ``per_class_iou`` (None for classes
        that never occur, the unseen ones among them), in percent.
    """
    split = data.split
    if eval_split == "train":
        dataset = SeenOnly(data.train, split, cfg.data.protocol)
    else:
        dataset = SeenOnly(data.eval_split(eval_split), split, "ignore")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive number of images, got {limit}")
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    if not len(dataset):
        raise ValueError(f"split {eval_split!r} has no images to evaluate")
    metrics, _, _ = evaluate(
        method, cfg, dataset, split, embed, progress=progress, boundary=False, seen_only=True
    )
    return {
        "seen_miou": metrics["seen_miou"],
        "pixel_acc": metrics["pixel_acc"],
        "per_class_iou": metrics["per_class_iou"],
        "images": len(dataset),
    }


@torch.no_grad()
def calibration_curve(
    method: Method,
    cfg: ExperimentConfig,
    dataset,
    split: ClassSplit,
    embed: Embedder,
    *,
    progress: bool = True,
) -> dict[str, list[float]]:
    """mIoU(S), mIoU(U) and hIoU of the shared calibration rule at every grid ``gamma`` (one pass
    over ``dataset``; :class:`zeroseg.metrics.calibration.CalibrationSweep`)."""
    from tqdm import tqdm

    from zeroseg.data.loader import iterate_eval, size_groups
    from zeroseg.engine.inference import infer_scores

    device = next(method.parameters()).device
    emb = embed(split.names).to(device)
    seen_mask = split.seen_mask().to(device)
    sweep = CalibrationSweep(
        split.num_classes, split.seen, split.unseen, GAMMAS, split.ignore_index
    )
    method.eval()

    def fn(images):
        return method.calibration_scores(images.to(device), emb, seen_mask)

    bar = tqdm(total=len(dataset), desc=f"sweep {method.name}", disable=not progress, leave=False)
    for batch in iterate_eval(
        dataset, cfg.eval.batch_size, rank=dist.rank(), world_size=dist.world_size()
    ):
        for part in size_groups(batch):
            sweep.process(infer_scores(fn, part["image"], cfg.eval), part["label"])
            bar.update(len(part["label"]))
    bar.close()
    return reduced_curve(sweep)


def reduced_curve(sweep: CalibrationSweep) -> dict[str, list[float]]:
    """The sweep's curve over every rank's pixels (its histograms summed across ranks first)."""
    if dist.is_dist():
        dist.all_reduce_sum(sweep.hist_seen)
        dist.all_reduce_sum(sweep.hist_unseen)
    return sweep.curve()


def own_calibration(method: Method) -> dict[str, float]:
    """The method config's own test-time constants, which the shared rule replaces."""
    return {
        f: float(getattr(method.cfg, f)) for f in OWN_CALIBRATION_FIELDS if hasattr(method.cfg, f)
    }


def evaluate_protocol(
    method: Method,
    cfg: ExperimentConfig,
    data: Data,
    embed: Embedder,
    *,
    eval_split: str = "test",
    progress: bool = True,
    keep: int = 0,
    post=None,
    boundary: bool = True,
    calibration: dict | None = None,
    curve: bool = True,
    image_confusions: ImageConfusions | None = None,
) -> tuple[dict, float, list[torch.Tensor]]:
    """The evaluation every report uses (docs/methods.md, "Evaluation").

    ``gamma`` of the shared calibration rule is chosen on ``val`` (:func:`choose_gamma`), then
    ``eval_split`` is evaluated at it; the calibration-free AUSUC comes from a sweep on
    ``eval_split``. With no unseen class in the vocabulary nothing is calibrated.

    Args:
        calibration: a ``calibration`` entry from an earlier call on the same model, to reuse its
            ``gamma`` (refinement rows) instead of sweeping ``val`` again.
        curve: sweep ``eval_split`` for AUSUC (off for refinement rows: the sweep is of the
            method's scores, which a refinement does not change).
        image_confusions: also fill this with each ``eval_split`` image's confusion matrix at
            the chosen gamma (:func:`evaluate`).

    Returns:
        (metrics with ``ausuc``, ``calibration`` {gamma, how, val_hiou, replaces} and
        ``calibration_curve`` on ``eval_split``; seconds per image; kept predictions).
    """
    split = data.split
    dataset = data.eval_split(eval_split)
    sweep = bool(split.unseen) and bool(split.seen)  # nothing to calibrate without both
    if not sweep:
        calibration = {"gamma": 0.0, "how": "none: the vocabulary is not split seen/unseen"}
    elif calibration is None:
        val_curve = calibration_curve(method, cfg, data.val, split, embed, progress=progress)
        gamma = choose_gamma(val_curve)
        calibration = {
            "gamma": gamma,
            "how": CALIBRATION_RULE,
            "val_hiou": val_curve["hiou"][val_curve["gamma"].index(gamma)],
            "replaces": own_calibration(method),
        }
    # The AUSUC sweep of eval_split rides on the calibrated evaluation's forward passes when the
    # method calibrates by the rule's subtraction alone and no image is labelled tile by tile
    # (ShapeWorld); else it is a pass of its own, and the evaluation as before.
    along = (
        CalibrationSweep(split.num_classes, split.seen, split.unseen, GAMMAS, split.ignore_index)
        if curve
        and sweep
        and post is None
        and one_pass_calibration(method)
        and scored_whole(dataset)
        else None
    )
    metrics, spi, kept = evaluate(
        method,
        cfg,
        dataset,
        split,
        embed,
        progress=progress,
        keep=keep,
        post=post,
        boundary=boundary,
        gamma=calibration["gamma"],
        sweep=along,
        image_confusions=image_confusions,
    )
    metrics["calibration"] = calibration
    if curve and sweep:
        if along is not None:
            test_curve = reduced_curve(along)
        else:
            test_curve = calibration_curve(method, cfg, dataset, split, embed, progress=progress)
        metrics["ausuc"] = ausuc(test_curve)
        metrics["calibration_curve"] = test_curve
    return metrics, spi, kept


def one_pass_calibration(method: Method) -> bool:
    """Whether ``method``'s calibrated scores are its probabilities minus the rule's ``gamma`` on
    the seen classes (:meth:`Method.calibrated_scores` not overridden, as SAZS's fusion does), so
    one forward pass gives both the calibrated prediction and the AUSUC sweep."""
    return type(method).calibrated_scores is Method.calibrated_scores


def replace(cfg: ExperimentConfig, **changes) -> ExperimentConfig:
    return dataclasses.replace(cfg, **changes)
