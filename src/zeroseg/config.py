"""Typed experiment configs: dataclasses loaded from YAML, with an error on every unknown key.

One preset file plus ``--set a.b=value`` overrides; no inheritance chains. The ``model`` section
is parsed into the chosen method's own config dataclass, so a misspelt model option fails too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


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
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
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
        out.append((key.strip(), yaml.safe_load(raw)))
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
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    for key, value in parse_overrides(overrides):
        _set_path(data, key, value)
    return from_dict(ExperimentConfig, data)
