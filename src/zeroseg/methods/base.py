"""What every method is: an ``nn.Module`` holding all its weights, with ``fit`` and ``scores``.

A method is built from its typed config and the class split (``__init__``), trained through its
stages by ``fit(ctx)`` (each stage a :func:`zeroseg.engine.trainer.train_stage` call), and applied
to images for any vocabulary by ``scores(images, class_embeddings, seen_mask)``. The run context
hands out data only through the zero-shot protocol (:class:`zeroseg.data.protocol.SeenOnly`) and
class embeddings only for the names a stage is allowed to know.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn as nn

from zeroseg.data.classes import ClassSplit
from zeroseg.engine.rundir import without_cadence, without_neutral
from zeroseg.metrics.calibration import class_probabilities

if TYPE_CHECKING:
    from zeroseg.foundation import Foundation


@dataclass
class StagePlan:
    """How to train a stage (:meth:`RunContext.run_stage`).

    Attributes:
        step_fn: ``step_fn(model, batch) -> {"loss": ..., ...}``.
        batches: ``batches(start, stop)`` yielding ``(step, batch)``.
        cfg: the stage's schedule (``TrainConfig``).
        params: the trainable parameters (default: every parameter of the model needing grad).
    """

    step_fn: Callable
    batches: Callable
    cfg: object
    params: Iterable[nn.Parameter] | None = None


QUICK_SCALE = 0.25  # the share of its steps a stage runs under ``zeroseg demo --quick`` by default


@dataclass(frozen=True)
class Stage:
    """A training stage a method declares (:attr:`Method.stages`): its name and its schedule.

    Attributes:
        name: the stage's name in ``--set stages.<name>.<key>=<value>`` (and its run
            directory's, where the stage has one of its own).
        schedule: where its ``TrainConfig`` lives: ``"train"`` (the experiment's ``train``, the
            main stage's) or ``"model.<path>"`` (a field of the method's config).
        quick: the factor ``zeroseg demo --quick`` scales its ``iters`` by (at least
            ``zeroseg.demo.QUICK_MIN_ITERS`` steps); 1.0 leaves the stage at full length.
    """

    name: str
    schedule: str
    quick: float = QUICK_SCALE


# Stages 2-3 of the generative methods (ZS3Net, PADing): the feature generator, then the classifier
# retrained on real seen + generated unseen features, each with its schedule in the model config.
# quick=1.0: --quick has never shortened PADing's (trained until their losses plateau); ZS3Net
# runs its generator at half length under --quick (ZS3Net.stages).
GENERATIVE_STAGES = (
    Stage("generator", "model.generator_train", quick=1.0),
    Stage("classifier", "model.classifier_train", quick=1.0),
)


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


@dataclass
class RunContext:
    """Everything a method's ``fit`` may use.

    Attributes:
        cfg: the experiment config (``zeroseg.config.ExperimentConfig``).
        directory: the run directory; each stage writes ``directory / <stage>``.
        split: the class split.
        train_set: labelled training data seen through the protocol (no unseen label).
        train_images: the same training images *without labels*, for transductive stages.
        embed: ``embed(names) -> (K, D)`` class embeddings from the configured text encoder.
        device: where to train.
        progress: show progress bars.
        world: the ShapeWorld spec when the dataset is ShapeWorld (for stage-0 pretraining).
        notes: methods append human-readable notes for the report (e.g. what they pretrain on).
        train_transform: the dataset's training augmentation ``f(sample, rng) -> sample``
            (random resize/crop/flip/photometric for real data, a flip for ShapeWorld).
        trained: the stages :meth:`train_stage` ran in this call (empty when every stage was
            loaded from an earlier run).
        foundation: the identity (name, sha256) of the pretrained foundation the method
            started from, set by :meth:`start_from_foundation`.
        unseen_name_stages: the training stages that used unseen class names
            (:meth:`uses_unseen_names`); empty: unseen names only at test time.
        encoders: the pretrained image-text encoders the model starts from
            (:meth:`pretrained_encoder`), and whether their captions name unseen classes.
        reuse_from: the same row's run directory in another demo output (``zeroseg demo
            --stages-from``): a stage finished there and not here is copied here
            (:meth:`adopt_stage`) instead of trained; that output is only read.
        adopted: the stage directories copied from there, in order.
    """

    cfg: object
    directory: Path
    split: ClassSplit
    train_set: torch.utils.data.Dataset
    train_images: torch.utils.data.Dataset
    embed: Callable[[Sequence[str]], torch.Tensor]
    device: torch.device
    progress: bool = True
    world: object | None = None
    notes: list[str] = field(default_factory=list)
    train_transform: Callable | None = None
    trained: list[str] = field(default_factory=list)
    foundation: dict | None = None
    unseen_name_stages: list[str] = field(default_factory=list)
    encoders: list[dict] = field(default_factory=list)
    revision: int = 0  # the method's :attr:`Method.revision`, for the stage keys
    reuse_from: Path | None = None
    adopted: list[Path] = field(default_factory=list)  # the stages :meth:`adopt_stage` copied

    def stage_dir(self, stage: str) -> Path:
        return self.directory / stage

    def adopt_stage(self, where: Path) -> None:
        """Copies the stage ``where`` (this run's own or a shared one) from :attr:`reuse_from`'s
        output when it is finished there and not here. Shared stages are found by their key
        (:meth:`shared_stage_dir`), so they are the same stage in both."""
        from zeroseg.engine.trainer import copy_stage, stage_done

        if self.reuse_from is None or stage_done(where):
            return
        source = self.reuse_from.parent / where.relative_to(self.directory.parent)
        if stage_done(source):
            copy_stage(source, where)
            self.adopted.append(source)

    def adopt_own_stages(self) -> None:
        """:meth:`adopt_stage` for every stage finished in :attr:`reuse_from` itself (this row's
        own stages, which a method may look up before running them, e.g. PADing's)."""
        from zeroseg.engine.trainer import stage_done

        if self.reuse_from is None or not self.reuse_from.is_dir():
            return
        for source in sorted(p for p in self.reuse_from.iterdir() if stage_done(p)):
            self.adopt_stage(self.directory / source.name)

    def shared_stage_dir(self, stage: str, key: dict) -> Path:
        """A stage directory shared by every run in the same parent directory with the same key.

        Methods that start from the same stage (ZS3Net and ZS5Net's segmenter, PADing's
        ablations and the mask-projection baseline's mask model) train it once. ``key`` must
        hold everything that decides the stage's weights (its configs, the world, the protocol).
        """
        blob = json.dumps(key, sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return self.directory.parent / "_shared" / f"{stage}-{digest}"

    def stage_where(self, name: str, key: dict | None) -> Path:
        """The directory of stage ``name``: this run's own (``key`` None) or the shared one of
        :meth:`stage_key` ``(**key)``, adopted from :attr:`reuse_from` when finished there.

        A shared stage under the key of the code before session 55 (the world by its path as
        typed, :meth:`data_key` ``by_path``) is used when it is finished and today's is not, or
        when only it was started (it resumes): so the stages trained before keep being reused,
        found by the spelling they were trained with (new ones by the world's content)."""
        from zeroseg.engine.trainer import stage_done

        if key is None:
            where = self.stage_dir(name)
            self.adopt_stage(where)
            return where
        keyed = [
            self.shared_stage_dir(name, self._stage_key(key, by_path=by_path))
            for by_path in (False, True)
        ]
        for candidate in keyed:
            self.adopt_stage(candidate)
            if stage_done(candidate):
                return candidate
        return next((c for c in keyed if c.is_dir()), keyed[0])  # an interrupted one resumes

    def data_key(self, *, by_path: bool = False) -> dict:
        """What decides the training data: dataset config, protocol, world content.

        A ShapeWorld world enters by its content (``world``), not by the path ``data.world``
        names it by, so the same world named another way (relative or absolute, a copy
        elsewhere, the default world's own file for None) is the same stage. ``by_path``: the key
        as it was before session 55, with the path as typed (for the default world, None: the
        same key), whose stages are still found (:meth:`stage_where`)."""
        world = self.world.content_key() if self.world is not None else None
        data = dataclasses.asdict(self.cfg.data)
        if world is not None and not by_path:
            data["world"] = None  # the content key below says which world
        key = {"data": data, "world": world, "seed": self.cfg.seed}
        if self.world is None:
            from zeroseg.data.real import VAL_FRACTION, VAL_MAX, VAL_SALT

            # real data: the held-out val images are not trained on, so they decide the weights
            key["val_holdout"] = [VAL_SALT, VAL_FRACTION, VAL_MAX]
        return key

    def stage_key(self, **parts) -> dict:
        """The reuse key of a stage: what decides the training data (:meth:`data_key`), the
        method's :attr:`Method.revision` (when not 0) and ``parts`` (configs as dataclasses or
        plain values; dataclasses are turned into dicts), without the cadence keys (checkpoint
        and log intervals), which change no weight, as in a run's identity."""
        return self._stage_key(parts, by_path=False)

    def _stage_key(self, parts: dict, *, by_path: bool) -> dict:
        return {
            "data": self.data_key(by_path=by_path),
            **revision_key(self.revision),
            **without_neutral({k: without_cadence(_plain(v)) for k, v in sorted(parts.items())}),
        }

    def run_stage(
        self,
        stage: str,
        *,
        model: nn.Module,
        prepare: Callable[[], StagePlan],
        key: dict | None = None,
        directory: str | None = None,
        guard: bool = True,
        meta: dict | None = None,
    ) -> Path:
        """Loads a finished stage into ``model``, or prepares and trains it: the one way every
        method runs a stage.

        Args:
            stage: the stage's name (logs, checkpoints, :attr:`trained`).
            model: the module whose weights the stage saves and loads.
            prepare: called only when the stage must be trained (after the check, so a reused
                stage loads no foundation and builds no loader): sets up and returns the plan.
            key: the :meth:`stage_key` parts of a stage shared by every run in the parent
                directory with the same key (:meth:`shared_stage_dir`); None: this run's own.
            directory: the directory name (default ``stage``).
            guard: the protocol guard (see :meth:`train_stage`).
            meta: recorded with the checkpoints.

        The report notes ``prepare`` adds (e.g. how many pixels ZS5Net pseudo-labelled) are
        recorded with the stage's weights and given again to a run that reuses the stage.

        Returns:
            The stage directory.
        """
        from zeroseg.engine.trainer import load_stage, stage_done

        where = self.stage_where(directory or stage, key)
        if stage_done(where):
            recorded = load_stage(model, where).get("notes", [])
            self.notes.extend(n for n in recorded if n not in self.notes)
            return where
        before = len(self.notes)
        plan = prepare()
        added = self.notes[before:]
        self.train_stage(
            stage=stage,
            model=model,
            step_fn=plan.step_fn,
            batches=plan.batches,
            cfg=plan.cfg,
            params=plan.params,
            directory=where,
            guard=guard,
            meta={**(meta or {}), **({"notes": added} if added else {})},
        )
        return where

    def stage_finished(self, stage: str) -> bool:
        """Whether this run's own stage ``stage`` is finished (to skip the stages before it)."""
        from zeroseg.engine.trainer import stage_done

        return stage_done(self.stage_dir(stage))

    def train_stage(self, *, guard: bool = True, **kwargs) -> dict:
        """:func:`zeroseg.engine.trainer.train_stage` with this run's device and progress setting,
        and the protocol guard on: every batch is checked to carry no unseen label. Only a stage
        that sees every label by definition (the oracle) passes ``guard=False``.
        """
        from zeroseg.engine.trainer import train_stage

        self.trained.append(kwargs["stage"])
        return train_stage(
            split=self.split if guard else None,
            device=self.device,
            progress=self.progress,
            **kwargs,
        )

    def loader(
        self,
        cfg,
        dataset=None,
        *,
        batch_size: int | None = None,
        seed_offset: int = 0,
        transform=...,
    ):
        """Resumable step batches of ``dataset`` (default: the protocol's labelled training set).

        Args:
            cfg: the stage's ``TrainConfig`` (batch size and seed).
            batch_size: overrides ``cfg.batch_size`` (e.g. half batches of two sources).
            seed_offset: added to ``cfg.seed``, so two loaders of one stage draw different orders.
            transform: the augmentation (default: this run's ``train_transform``).
        """
        from zeroseg.data.loader import StepLoader, StepSampler

        dataset = self.train_set if dataset is None else dataset
        return StepLoader(
            dataset,
            StepSampler(len(dataset), batch_size or cfg.batch_size, cfg.seed + seed_offset),
            transform=self.train_transform if transform is ... else transform,
        )

    def uses_foundation(self, name: str) -> None:
        """Records that the method starts from foundation ``name`` (said of a reused stage too).

        The foundation was pretrained on captions only, but those captions may name this
        world's unseen classes (as CLIP's web captions name VOC's): the report says so.
        """
        from zeroseg.foundation import foundation_identity

        identity = foundation_identity(name)
        if self.foundation == identity:
            return
        self.foundation = identity
        excluded = identity["excluded"]
        # The web's captions say every colour x shape / texture name except the excluded ones.
        unseen = set(self.world.unseen) if self.world is not None else None
        entry: dict = {
            "encoder": f"ShapeWorld foundation {identity['name']} (sha256 {identity['sha256'][:12]})",
            "captions_name_unseen": bool(unseen - set(excluded)) if unseen is not None else True,
            "basis": "the foundation's web captions (every colour x shape / texture name"
            + (f" but {len(excluded)} excluded)" if excluded else ")"),
        }
        if entry not in self.encoders:
            self.encoders.append(entry)
        self.notes.append(
            f"starts from the ShapeWorld foundation {identity['name']} "
            f"(sha256 {identity['sha256'][:12]}): image-level captions only, "
            + (
                f"with {len(excluded)} names left out of its captions"
                if excluded
                else "captions that may name this world's unseen classes (CLIP-like)"
            )
        )

    def start_from_foundation(
        self, name: str, backbone: nn.Module, head: nn.Module | None = None
    ) -> Foundation:
        """Initialises ``backbone`` (and ``head``) from a pretrained ShapeWorld foundation;
        returns the loaded :class:`zeroseg.foundation.Foundation`, for any other part a method
        copies from it (read and checked once)."""
        from zeroseg.foundation import load_into
        from zeroseg.foundation.web import check_world_in_range

        if self.world is not None:
            check_world_in_range(self.world)
        found = load_into(backbone, head, name)
        self.uses_foundation(name)
        return found

    def seen_embeddings(self) -> torch.Tensor:
        """(S, D) embeddings of the seen classes only (what inductive stages may know)."""
        return self.embed(self.split.seen_names)

    def all_embeddings(self, *, reason: str, stage: str) -> torch.Tensor:
        """(K, D) embeddings of every class, unseen names included.

        Only generative and transductive methods may call this during training (their published
        settings use unseen *names*, never unseen pixels); stage and reason go to the report.
        """
        self.uses_unseen_names(reason=reason, stage=stage)
        return self.embed(self.split.names)

    def uses_unseen_names(self, *, reason: str, stage: str) -> None:
        """Records that training ``stage`` (e.g. "2-3", "5") uses unseen class names.

        Call it before a finished stage is loaded, so a reused stage is reported the same way.
        """
        if stage not in self.unseen_name_stages:
            self.unseen_name_stages.append(stage)
            self.notes.append(f"uses unseen class names in stage {stage}: {reason}")

    def pretrained_encoder(self, what: str) -> None:
        """Records that the model starts from pretrained image-text encoder ``what``.

        On ShapeWorld it is the stage-0 encoder of the caption split, and the record counts the
        caption images that show (so whose captions name) an unseen class; a CLIP checkpoint's
        web captions are taken to name them (CLIP-like).
        """
        entry: dict = {"encoder": what}
        if self.world is not None:
            from zeroseg.data.shapeworld.world import caption_images_with_unseen

            naming, total = caption_images_with_unseen(self.world)
            entry.update(
                captions_name_unseen=naming > 0,
                caption_images=total,
                caption_images_naming_unseen=naming,
            )
        else:
            entry.update(captions_name_unseen=True, basis="web image-text pairs (CLIP)")
        if entry not in self.encoders:
            self.encoders.append(entry)


def revision_key(revision: int) -> dict:
    """What a method's :attr:`Method.revision` adds to a reuse key (a stage key, the demo's run
    fingerprint, the run record): nothing at 0, so runs of methods never revised keep their keys."""
    return {"revision": revision} if revision else {}


class Method(nn.Module):
    """Base class of the methods in ``zeroseg.methods.METHODS``."""

    name: ClassVar[str] = "base"
    Config: ClassVar[type]
    protocol: ClassVar[str] = "inductive"  # inductive | transductive | supervised (oracle)
    produces_segments: ClassVar[bool] = False  # panoptic/instance outputs (mask methods)
    # How ``scores`` become class probabilities for the shared calibration rule
    # (zeroseg.metrics.calibration): "logits" (softmax), "probabilities" or "evidence".
    score_kind: ClassVar[str] = "logits"
    # Its training stages in order, each with where its schedule lives (one of them the
    # experiment's ``train``): what ``--quick`` scales, ``--set stages.<name>.iters=N`` reaches and
    # a smoke run shortens, so every stage runs. Every method declares them.
    stages: ClassVar[tuple[Stage, ...]] = ()
    # ``--set`` overrides that shrink a paper-scale model config to a CPU smoke-test size (the
    # architecture family stays the preset's), used by the preset tests.
    tiny: ClassVar[tuple[str, ...]] = ()
    # The image and text towers come from one CLIP checkpoint (``model.pretrained``) on real data.
    loads_clip: ClassVar[bool] = False
    # Raised by one whenever a code change alters what the method trains (its weights or
    # figures from the same config): it enters the demo's run fingerprint and every stage key
    # of the method's runs, so stages finished by older code are never reused as current
    # (:func:`revision_key`).
    revision: ClassVar[int] = 0

    def __init__(self, cfg, *, split: ClassSplit, embed_dim: int):
        super().__init__()
        self.cfg, self.split, self.embed_dim = cfg, split, embed_dim

    @classmethod
    def stage(cls, name: str) -> Stage:
        """The declared stage ``name``.

        Raises:
            ConfigError: no such stage (the message lists the method's stages).
        """
        from zeroseg.config import ConfigError

        for stage in cls.stages:
            if stage.name == name:
                return stage
        raise ConfigError(
            f"method {cls.name!r} has no stage {name!r}; its stages: "
            + ", ".join(s.name for s in cls.stages)
        )

    @classmethod
    def model_schedules(cls) -> tuple[str, ...]:
        """The model-config paths of the schedules of its stages besides the experiment's
        ``train`` (e.g. ``("generator_train", "classifier_train")``)."""
        return tuple(s.schedule.removeprefix("model.") for s in cls.stages if s.schedule != "train")

    @classmethod
    def foundation_of(cls, cfg) -> str | None:
        """The pretrained foundation a model config starts from ("shipped", a path, or None)."""
        return getattr(cfg, "foundation", None)

    @classmethod
    def stage0_config(cls, cfg) -> object | None:
        """The ShapeWorld stage-0 encoder config (``zeroseg.pretrain.PretrainConfig``) a model
        config starts from, or None: what ``zeroseg pretrain <preset>`` trains."""
        return None

    @classmethod
    def refinement(cls, cfg) -> object | None:
        """The method's own shape-aware refinement settings (``zeroseg.shape.fusion.RefineConfig``)
        for a model config, or None: ``zeroseg data spectral`` precomputes for them."""
        return None

    def fit(self, ctx: RunContext) -> None:
        raise NotImplementedError

    def extra_metrics(
        self, cfg, data, embed, *, progress: bool = True, eval_split: str = "test"
    ) -> dict:
        """Metrics beyond the semantic ones over ``data.eval_split(eval_split)`` (panoptic PQ,
        instance AP for the methods that produce segments); none by default."""
        return {}

    def bench_extra(self, spec) -> dict:
        """Timings of the method's own inference parts on ``spec``'s images for ``zeroseg bench``
        (e.g. SAZS's spectral decomposition); none by default."""
        return {}

    def scores(
        self, images: torch.Tensor, class_embeddings: torch.Tensor, seen_mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-pixel class scores.

        Args:
            images: (B, 3, H, W) uint8.
            class_embeddings: (K, D) embeddings of the test vocabulary.
            seen_mask: (K,) bool, which of the K classes were seen in training.

        Returns:
            (B, K, H, W) scores; the prediction is their argmax.
        """
        raise NotImplementedError

    def labels(
        self, images: torch.Tensor, class_embeddings: torch.Tensor, seen_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, H, W) int64 labels: the argmax of :meth:`scores`, which methods may compute
        without the (B, K, H, W) scores (ZegCLIP upsamples only the classes that can win)."""
        return self.scores(images, class_embeddings, seen_mask).argmax(1)

    def calibration_scores(
        self, images: torch.Tensor, class_embeddings: torch.Tensor, seen_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, K, H, W) class probabilities in [0, 1] before any calibration: what the shared
        rule (:mod:`zeroseg.metrics.calibration`) subtracts its ``gamma`` from.

        The method's own test-time constant (a config ``calibration`` or ``seen_reduction``) is
        zero for the call: the shared rule's ``gamma`` takes its place.
        """
        with own_calibration_off(self):
            return class_probabilities(
                self.scores(images, class_embeddings, seen_mask), self.score_kind
            )

    def calibrated_scores(
        self,
        images: torch.Tensor,
        class_embeddings: torch.Tensor,
        seen_mask: torch.Tensor,
        gamma: float,
    ) -> torch.Tensor:
        """(B, K, H, W) scores under the shared rule: class probabilities minus ``gamma`` on the
        seen classes (their argmax is the calibrated prediction). Methods that decode after
        calibrating (SAZS's shape-aware fusion) override this."""
        return subtract_seen(
            self.calibration_scores(images, class_embeddings, seen_mask), seen_mask, gamma
        )


# Test-time calibration constants of method configs that the shared rule replaces.
OWN_CALIBRATION_FIELDS = ("calibration", "seen_reduction")


@contextlib.contextmanager
def own_calibration_off(method: Method) -> Iterator[None]:
    """Within the block, ``method.cfg`` has every :data:`OWN_CALIBRATION_FIELDS` entry at 0."""
    cfg = method.cfg
    changes = {f: 0.0 for f in OWN_CALIBRATION_FIELDS if getattr(cfg, f, 0)}
    if changes:
        method.cfg = dataclasses.replace(cfg, **changes)
    try:
        yield
    finally:
        method.cfg = cfg


def subtract_seen(probs: torch.Tensor, seen_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """The shared rule's step: (B, K, H, W) class probabilities minus ``gamma`` on the seen
    classes (``seen_mask``: (K,) bool). Every calibrated prediction is this tensor's argmax."""
    return probs - gamma * seen_mask.to(probs).view(1, -1, 1, 1)


def calibrate(scores: torch.Tensor, seen_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Calibrated stacking (Chao et al. 2016): subtract ``gamma`` from seen-class probabilities.

    Args:
        scores: (B, K, H, W) logits.
        seen_mask: (K,) bool.
    """
    if gamma == 0:
        return scores
    return subtract_seen(scores.float().softmax(1), seen_mask, gamma)
