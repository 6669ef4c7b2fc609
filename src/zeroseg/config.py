"""Typed experiment configs: dataclasses loaded from YAML, with an error on every unknown key.

One preset file plus ``--set a.b=value`` overrides; no inheritance chains. The ``model`` section
is parsed into the chosen method's own config dataclass, so a misspelt model option fails too.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zeroseg._yaml import one_line, safe_load
from zeroseg.engine.inference import InferenceConfig
from zeroseg.engine.trainer import TrainConfig

PRESET_DIR = Path(__file__).with_name("configs")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class DataConfig:
    """Which dataset, which split of classes, which training protocol."""

    dataset: str = "shapeworld"  # shapeworld | voc | coco_stuff | context | coco_panoptic
    #                               | pascal_5i | coco_20i (with fold)
    fold: int | None = None  # PASCAL-5i / COCO-20i fold 0-3 (which quarter of classes is unseen)
    world: str | None = None  # ShapeWorld spec file (None: the default world)
    root: str | None = None  # dataset root directory for real datasets
    protocol: str = "ignore"  # ignore (unseen pixels -> 255) | strict (drop images with unseen)
    train_limit: int | None = None  # use only the first N training images (quick runs)
    val_limit: int | None = None  # evaluate on the first N images of val and of test
    crop_size: int = 512  # training crop for real datasets
    scale_range: tuple[float, float] = (0.5, 2.0)  # random resize range for real datasets
    skip_bad: bool = False  # scan real datasets first and leave out bad samples (counted, logged)


@dataclass
class TextConfig:
    """Where class embeddings come from."""

    encoder: str = "minilm"  # minilm | attributes | wordvec:PATH | clip:PATH
    templates: str = "shapeworld"  # a template set name (none, imagenet, shapeworld)


DEMO_ROWS = ("", "default", "ablation")


@dataclass
class DemoConfig:
    """Whether ``zeroseg demo`` runs this (ShapeWorld) preset, as the row named by the preset's
    first word (``projection-frozen_unet-small_2k_shapeworld`` -> ``projection-frozen``)."""

    row: str = ""  # "" (not a demo row) | "default" (run by default) | "ablation" (--ablations)
    order: int = 0  # the row's place in the report (ascending)
    # demo rows it is compared with like for like (same backbone, images, budget); first = main
    baselines: list[str] = field(default_factory=list)
    # the row's training seconds at --quick on one thread, measured on make demo's machine: only
    # the order in which a --jobs run starts the rows (zeroseg.demo._priority); 100: a typical row
    cost: float = 100.0
    # the rows whose trained stages this row reuses (ZS5Net: ZS3Net's segmenter): a --jobs run
    # starts it only after they finish, so no worker idles on another's stage lock. None: its
    # baselines (the safe default); [] for a row that shares no stage with them
    after: list[str] | None = None


@dataclass
class ExperimentConfig:
    """A whole experiment: data, text, method and its model options, schedule, inference."""

    method: str = "projection"
    name: str = ""  # run name (default: the method name)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: InferenceConfig = field(default_factory=InferenceConfig)
    model: dict = field(default_factory=dict)  # parsed by the method's own Config
    demo: DemoConfig = field(default_factory=DemoConfig)  # the demo row (no effect on a run)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# Field types taken as they are, without conversion -> what their errors say is expected.
_PLAIN = {bool: "true/false", str: "a string"}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where=where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (a,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, a, where) for v in value]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(tp, type) and tp in _PLAIN:
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {_PLAIN[tp]}, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            value = int(value)  # iters: 2e4 is an integer written in exponent form
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    return value


def from_dict(cls, data: dict, *, where: str = "config"):
    """Builds dataclass ``cls`` from a mapping; unknown keys and wrong types are errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid keys: {sorted(fields)}")
    kwargs = {}
    for k, v in data.items():
        base = _field_default(fields[k])
        if isinstance(v, dict) and dataclasses.is_dataclass(base):
            # A partial mapping overrides the field's own default (its default_factory may set
            # values the class defaults do not, e.g. PretrainConfig.train), not the class's.
            v = _merged(dataclasses.asdict(base), v)
        kwargs[k] = _coerce(v, hints[k], f"{where}.{k}")
    return cls(**kwargs)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _merged(base: dict, update: dict) -> dict:
    """``base`` with ``update``'s keys replaced, nested mappings merged key by key."""
    out = dict(base)
    for k, v in update.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_path(d: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"override {path}: {k} is not a section")
    d[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """``["train.iters=100", "model.layers=3"]`` -> ``[("train.iters", 100), ...]`` (YAML values)."""
    out = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({one_line(e)})"
            ) from None
        out.append((key.strip(), value))
    return out


def resolve_preset(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = PRESET_DIR / (
        str(name_or_path) + ("" if str(name_or_path).endswith(".yaml") else ".yaml")
    )
    if candidate.is_file():
        return candidate
    valid = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path} is neither a file nor a preset; presets: {valid}")


def describe_source(source: str | Path | dict | None, overrides: list[str] | None = None) -> str:
    """How errors name a config: its file (and whether ``--set`` changed it), or "config"."""
    if source is None or isinstance(source, dict):
        return "config"
    return f"{resolve_preset(source)}" + (" with --set overrides" if overrides else "")


def load_config(
    source: str | Path | dict | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Loads a preset/file/dict and applies overrides; every key is checked."""
    if source is None:
        data: dict = {}
    elif isinstance(source, dict):
        data = dict(source)
    else:
        path = resolve_preset(source)
        data = _with_base(_read_mapping(path), path)
    for key, value in parse_overrides(overrides):
        _set_path(data, key, value)
    origin = describe_source(source, overrides)
    try:
        cfg = from_dict(ExperimentConfig, data)
    except ConfigError as e:
        raise ConfigError(str(e) if origin == "config" else f"{origin}: {e}") from None
    validate_config(cfg, where=origin)
    return cfg


def _read_mapping(path: Path) -> dict:
    """A preset file's top-level mapping (an empty file is an empty mapping)."""
    try:
        data = safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {one_line(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {data!r}")
    return data


def _merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied key by key (mappings merged, anything else replaced)."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _with_base(data: dict, path: Path) -> dict:
    """Resolves ``base: <preset>``: the base preset's mapping with this file's keys applied.

    One level only (a base has no base): an ablation preset reads as its base plus the few keys
    it changes, never as a chain. The ``demo`` row is the file's own, never inherited.
    """
    if "base" not in data:
        return data
    name = data.pop("base")
    if not isinstance(name, str):
        raise ConfigError(f"{path}: base must be a preset name, got {name!r}")
    base = _read_mapping(resolve_preset(name))
    if "base" in base:
        raise ConfigError(
            f"{path}: base {name!r} has a base of its own ({base['base']!r}); one level only"
        )
    base.pop("demo", None)
    return _merge(base, data)


# --- value checks: every bound is checked before any work starts ----------------------------------

MAX_ITERS = 100_000_000  # far beyond any schedule here; beyond it is a typo (1e12)
MAX_BATCH = 65_536
MAX_CROP = 8192  # pixels per side of a training crop or an inference window
DATASETS = ("shapeworld", "voc", "coco_stuff", "context", "coco_panoptic", "pascal_5i", "coco_20i")


DEMO_COST_EXPECTED = "a number of seconds >= 0"  # demo.cost, checked here and by zeroseg.demo
DEMO_AFTER_EXPECTED = "a list of demo row names"  # demo.after, here and in zeroseg.demo


def _check(ok: bool, where: str, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{where}: {key} must be {expected}, got {value!r}")


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _names(value: Any) -> bool:
    """A list of strings (demo.baselines, demo.after)."""
    return isinstance(value, list) and all(isinstance(b, str) for b in value)


def _finite(value: Any, lo: float = -math.inf, hi: float = math.inf) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and lo <= value <= hi
    )


def check_train(t: TrainConfig, *, where: str, key: str) -> None:
    """Bounds of one stage's schedule (``key`` is its path, e.g. ``model.generator_train``)."""
    k = f"{key}." if key else ""
    _check(_int_in(t.iters, 1, MAX_ITERS), where, f"{k}iters", f"an integer 1-{MAX_ITERS}", t.iters)
    _check(
        _int_in(t.batch_size, 1, MAX_BATCH),
        where,
        f"{k}batch_size",
        f"an integer 1-{MAX_BATCH}",
        t.batch_size,
    )
    _check(_finite(t.lr) and t.lr > 0, where, f"{k}lr", "a finite number > 0", t.lr)
    _check(_finite(t.weight_decay, 0), where, f"{k}weight_decay", "a number >= 0", t.weight_decay)
    _check(_finite(t.momentum, 0, 1), where, f"{k}momentum", "a number in [0, 1]", t.momentum)
    _check(t.optimizer in ("adamw", "sgd"), where, f"{k}optimizer", "adamw or sgd", t.optimizer)
    _check(
        t.scheduler in ("poly", "cosine", "constant"),
        where,
        f"{k}scheduler",
        "poly, cosine or constant",
        t.scheduler,
    )
    _check(
        t.amp in ("none", "bf16", "fp16", "auto"),
        where,
        f"{k}amp",
        "none, bf16, fp16 or auto",
        t.amp,
    )
    _check(
        _int_in(t.warmup_iters, 0, MAX_ITERS),
        where,
        f"{k}warmup_iters",
        "an integer >= 0",
        t.warmup_iters,
    )
    _check(_finite(t.grad_clip, 0), where, f"{k}grad_clip", "a number >= 0 (0: off)", t.grad_clip)
    _check(
        _int_in(t.log_every, 1, MAX_ITERS), where, f"{k}log_every", "an integer >= 1", t.log_every
    )
    _check(
        _int_in(t.ckpt_every, 0, MAX_ITERS),
        where,
        f"{k}ckpt_every",
        "an integer >= 0 (0: by time only)",
        t.ckpt_every,
    )
    _check(
        _finite(t.ckpt_minutes, 0),
        where,
        f"{k}ckpt_minutes",
        "a number >= 0 (0: by steps only)",
        t.ckpt_minutes,
    )
    _check(
        _int_in(t.keep_ckpts, 1, 1000), where, f"{k}keep_ckpts", "an integer 1-1000", t.keep_ckpts
    )
    _check(_int_in(t.seed, 0, 2**63 - 1), where, f"{k}seed", "an integer >= 0", t.seed)


def check_inference(e: InferenceConfig, *, where: str, key: str = "eval") -> None:
    _check(e.mode in ("whole", "slide"), where, f"{key}.mode", "whole or slide", e.mode)
    _check(_int_in(e.crop, 1, MAX_CROP), where, f"{key}.crop", f"an integer 1-{MAX_CROP}", e.crop)
    _check(
        _int_in(e.stride, 1, max(1, e.crop)) if _int_in(e.crop, 1, MAX_CROP) else False,
        where,
        f"{key}.stride",
        f"an integer 1-{e.crop} (at most the crop)",
        e.stride,
    )
    _check(
        _int_in(e.batch_size, 1, MAX_BATCH),
        where,
        f"{key}.batch_size",
        f"an integer 1-{MAX_BATCH}",
        e.batch_size,
    )
    _check(e.amp in ("none", "bf16"), where, f"{key}.amp", "none or bf16", e.amp)


def check_nested(obj: Any, *, where: str, key: str) -> None:
    """Checks every schedule and inference setting inside a (method) config dataclass, and that
    no float anywhere in it is NaN or infinite."""
    if isinstance(obj, TrainConfig):
        check_train(obj, where=where, key=key)
        return
    if isinstance(obj, InferenceConfig):
        check_inference(obj, where=where, key=key)
        return
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            check_nested(
                getattr(obj, f.name), where=where, key=f"{key}.{f.name}" if key else f.name
            )
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_nested(v, where=where, key=f"{key}[{i}]")
    elif isinstance(obj, float):
        _check(math.isfinite(obj), where, key, "a finite number", obj)


def validate_config(cfg: ExperimentConfig, *, where: str = "config") -> None:
    """Raises :class:`ConfigError` naming the key of the first value out of bounds.

    Checks everything but the ``model`` section (parsed and checked by
    :func:`zeroseg.runner.check_config`, which knows the method) and the device's availability
    (checked when a run starts: a checkpoint trained on a GPU must still load on a CPU).
    """
    _check(_int_in(cfg.seed, 0, 2**63 - 1), where, "seed", "an integer >= 0", cfg.seed)
    _check(cfg.demo.row in DEMO_ROWS, where, "demo.row", "'', default or ablation", cfg.demo.row)
    _check(
        _names(cfg.demo.baselines),
        where,
        "demo.baselines",
        "a list of demo row names",
        cfg.demo.baselines,
    )
    _check(_finite(cfg.demo.cost, 0), where, "demo.cost", DEMO_COST_EXPECTED, cfg.demo.cost)
    _check(
        cfg.demo.after is None or _names(cfg.demo.after),
        where,
        "demo.after",
        DEMO_AFTER_EXPECTED,
        cfg.demo.after,
    )
    _check(
        cfg.device in ("auto", "cpu", "cuda")
        or (cfg.device.startswith("cuda:") and cfg.device[5:].isdigit()),
        where,
        "device",
        "auto, cpu, cuda or cuda:N",
        cfg.device,
    )
    d = cfg.data
    _check(d.dataset in DATASETS, where, "data.dataset", f"one of {list(DATASETS)}", d.dataset)
    _check(
        d.protocol in ("ignore", "strict"), where, "data.protocol", "ignore or strict", d.protocol
    )
    _check(d.fold is None or _int_in(d.fold, 0, 3), where, "data.fold", "0-3 or null", d.fold)
    for key in ("train_limit", "val_limit"):
        v = getattr(d, key)
        _check(
            v is None or _int_in(v, 1, 10**9), where, f"data.{key}", "an integer >= 1 or null", v
        )
    _check(
        _int_in(d.crop_size, 8, MAX_CROP),
        where,
        "data.crop_size",
        f"an integer 8-{MAX_CROP}",
        d.crop_size,
    )
    lo, hi = d.scale_range
    _check(
        _finite(lo, 0.01, 100) and _finite(hi, 0.01, 100) and lo <= hi,
        where,
        "data.scale_range",
        "[low, high] with 0.01 <= low <= high <= 100",
        list(d.scale_range),
    )
    check_train(cfg.train, where=where, key="train")
    check_inference(cfg.eval, where=where)
