"""Strict loading of pretrained CLIP weights (Radford et al., ICML 2021) from local files.

Nothing is downloaded: a user points at a file or directory. Formats, detected from the path:

- OpenAI's released checkpoints (``ViT-B-16.pt``): TorchScript archives. ``torch.load(...,
  weights_only=True)`` refuses TorchScript archives, and ``torch.jit.load`` would compile and run
  the archive's code (``__setstate__`` methods, for one), so neither is used. The archive is a zip
  whose ``data.pkl`` pickles the module tree; it is read here with an unpickler that allows no
  global but tensor rebuilding, storage types and inert placeholders for the TorchScript classes,
  so reading it runs no code from the file.
- OpenAI-layout state dicts saved with ``torch.save`` (``.pt``/``.pth``/``.bin``), read with
  ``torch.load(weights_only=True)``, or as ``.safetensors``.
- Hugging Face CLIP directories: ``config.json`` + ``model.safetensors`` (or shards with an index,
  or ``pytorch_model.bin``), keys remapped, the architecture cross-checked with ``config.json``.
- zeroseg's own ``.safetensors`` (``save_clip_safetensors``), which carry their config.

The architecture is inferred from tensor shapes, as OpenAI's ``build_model`` does (heads =
width // 64 there, the rule of every OpenAI model). Every key and shape must match the model:
missing, unexpected and misshaped keys raise ``CheckpointError`` naming each key in the file's
own naming, with shapes.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from zeroseg.models.backbones.clip import (
    ACTIVATIONS,
    CLIP,
    CLIPConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
)

__all__ = [
    "CheckpointError",
    "clip_config_from_hf",
    "hf_to_zeroseg",
    "infer_clip_config",
    "load_clip",
    "openai_to_zeroseg",
    "read_clip_checkpoint",
    "read_torchscript_tensors",
    "save_clip_safetensors",
]

CONFIG_METADATA_KEY = "zeroseg_clip_config"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it stands (unknown format or keys, wrong shapes)."""


# --------------------------------------------------------------------------------------------
# Key remapping, one function per format. zeroseg's names are OpenAI's, with the text tower
# moved under "text.".
# --------------------------------------------------------------------------------------------

# Entries of OpenAI's TorchScript module that are not weights.
_OPENAI_NOT_WEIGHTS = {"input_resolution", "context_length", "vocab_size"}


def openai_to_zeroseg(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Renames an OpenAI CLIP state dict to zeroseg's keys.

    ``visual.*`` and ``logit_scale`` keep their names; every other key belongs to the text
    tower and gains the ``text.`` prefix. The integer attributes ``input_resolution``,
    ``context_length``, ``vocab_size`` and the per-block causal ``attn_mask`` tensors of the
    TorchScript archives are not weights and are dropped.

    Raises:
        CheckpointError: for a ResNet image tower (RN50 etc.), which zeroseg does not build.
    """
    if any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in state_dict):
        raise CheckpointError(
            "this is an OpenAI ResNet CLIP (visual.layer1 / visual.attnpool keys); zeroseg "
            "builds ViT image towers only (ViT-B/16, ViT-L/14, ...)"
        )
    out = {}
    for key, value in state_dict.items():
        if key in _OPENAI_NOT_WEIGHTS or key.endswith(".attn_mask"):
            continue
        out[key if key.startswith("visual.") or key == "logit_scale" else "text." + key] = value
    return out


def _zeroseg_to_openai_name(key: str) -> str:
    return key[len("text.") :] if key.startswith("text.") else key


_HF_NAMES = {
    "logit_scale": "logit_scale",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "text.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "text.positional_embedding",
    "text_model.final_layer_norm.weight": "text.ln_final.weight",
    "text_model.final_layer_norm.bias": "text.ln_final.bias",
}
# HF keeps projections as nn.Linear weights (out, in); CLIP multiplies by (in, out) matrices.
_HF_TRANSPOSED = {
    "visual_projection.weight": "visual.proj",
    "text_projection.weight": "text.text_projection",
}
_HF_TOWERS = {"vision_model": "visual", "text_model": "text"}
_HF_BLOCK = {
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
}
_HF_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")
_HF_LAYER = re.compile(r"(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)")
# Non-persistent buffers that older transformers versions saved.
_HF_NOT_WEIGHTS = {"vision_model.embeddings.position_ids", "text_model.embeddings.position_ids"}


def hf_to_zeroseg(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Renames a Hugging Face ``CLIPModel`` state dict to zeroseg's keys.

    Separate q/k/v projections are concatenated (in that order) into ``attn.in_proj_*``;
    ``visual_projection`` / ``text_projection`` weights are transposed. A partial dict (one
    tower only) is remapped as far as it goes; completeness is checked against the model.

    Raises:
        CheckpointError: listing keys that have no zeroseg name, or q/k/v sets that are
            incomplete.
    """
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    unknown = []
    for key, value in state_dict.items():
        if key in _HF_NOT_WEIGHTS:
            continue
        if key in _HF_NAMES:
            out[_HF_NAMES[key]] = value
            continue
        if key in _HF_TRANSPOSED:
            out[_HF_TRANSPOSED[key]] = value.t()
            continue
        layer = _HF_LAYER.fullmatch(key)
        if layer is None:
            unknown.append(key)
            continue
        tower, index, rest = layer.groups()
        prefix = f"{_HF_TOWERS[tower]}.transformer.resblocks.{index}."
        if rest in _HF_BLOCK:
            out[prefix + _HF_BLOCK[rest]] = value
        elif (m := _HF_QKV.fullmatch(rest)) is not None:
            qkv.setdefault((prefix, m.group(2)), {})[m.group(1)] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            "keys with no counterpart in zeroseg's CLIP (Hugging Face layout): "
            + ", ".join(f"{k} {tuple(state_dict[k].shape)}" for k in sorted(unknown))
        )
    incomplete = []
    for (prefix, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            incomplete.extend(
                _zeroseg_to_hf_names(prefix + f"attn.in_proj_{kind}")[i]
                for i, p in enumerate("qkv")
                if p not in parts
            )
            continue
        out[prefix + f"attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if incomplete:
        raise CheckpointError("missing keys (Hugging Face layout): " + ", ".join(incomplete))
    return out


def _zeroseg_to_hf_names(key: str) -> list[str]:
    """The Hugging Face key(s) a zeroseg key comes from (for messages)."""
    for inverse in (_HF_NAMES, _HF_TRANSPOSED):
        for hf, ours in inverse.items():
            if ours == key:
                return [hf]
    m = re.fullmatch(r"(visual|text)\.transformer\.resblocks\.(\d+)\.(.+)", key)
    if m is None:
        return [key]
    tower = {v: k for k, v in _HF_TOWERS.items()}[m.group(1)]
    prefix = f"{tower}.encoder.layers.{m.group(2)}."
    rest = m.group(3)
    if rest.startswith("attn.in_proj_"):
        kind = rest[len("attn.in_proj_") :]
        return [f"{prefix}self_attn.{p}_proj.{kind}" for p in "qkv"]
    for hf, ours in _HF_BLOCK.items():
        if ours == rest:
            return [prefix + hf]
    return [key]


# --------------------------------------------------------------------------------------------
# Architecture inference and strict checking
# --------------------------------------------------------------------------------------------


def _count_blocks(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def infer_clip_config(
    state_dict: Mapping[str, Tensor], *, template: CLIPConfig | None = None
) -> CLIPConfig:
    """The CLIP architecture implied by a zeroseg-keyed state dict's shapes.

    Shapes cannot tell the heads, the activation or the LayerNorm epsilon: they come from
    ``template`` if given, else OpenAI's choices (heads = width // 64, QuickGELU, 1e-5).

    Args:
        state_dict: zeroseg keys (see ``openai_to_zeroseg`` / ``hf_to_zeroseg``).
        template: a config to take the heads, activation and epsilon from.

    Raises:
        CheckpointError: a key the inference needs is missing, or the position grid is not square.
    """
    needed = [
        "visual.conv1.weight",
        "visual.positional_embedding",
        "visual.proj",
        "visual.transformer.resblocks.0.mlp.c_fc.weight",
        "text.token_embedding.weight",
        "text.positional_embedding",
        "text.text_projection",
        "text.transformer.resblocks.0.mlp.c_fc.weight",
    ]
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise CheckpointError(f"cannot infer the CLIP architecture: missing keys {missing}")
    sd = state_dict
    width, _, patch, _ = sd["visual.conv1.weight"].shape
    n_pos = sd["visual.positional_embedding"].shape[0] - 1
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise CheckpointError(
            f"visual.positional_embedding has {n_pos} patch positions, not a square grid"
        )
    text_width = sd["text.token_embedding.weight"].shape[1]
    tv = template.vision if template is not None else None
    tt = template.text if template is not None else None
    vision = CLIPVisionConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=_count_blocks(sd, "visual.transformer.resblocks."),
        heads=tv.heads if tv else max(width // 64, 1),
        mlp_ratio=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        output_dim=sd["visual.proj"].shape[1],
        act=tv.act if tv else "quick_gelu",
        layer_norm_eps=tv.layer_norm_eps if tv else 1e-5,
    )
    text = CLIPTextConfig(
        context_length=sd["text.positional_embedding"].shape[0],
        vocab_size=sd["text.token_embedding.weight"].shape[0],
        width=text_width,
        layers=_count_blocks(sd, "text.transformer.resblocks."),
        heads=tt.heads if tt else max(text_width // 64, 1),
        output_dim=sd["text.text_projection"].shape[1],
        mlp_ratio=sd["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
        act=tt.act if tt else "quick_gelu",
        layer_norm_eps=tt.layer_norm_eps if tt else 1e-5,
    )
    try:
        return CLIPConfig(vision=vision, text=text)
    except ValueError as err:
        raise CheckpointError(f"inconsistent CLIP checkpoint: {err}") from err


def clip_config_from_hf(config: Mapping[str, Any]) -> CLIPConfig:
    """A ``CLIPConfig`` from a Hugging Face CLIP ``config.json`` dict.

    Raises:
        CheckpointError: an activation zeroseg does not implement, or a field missing.
    """
    try:
        v, t = config["vision_config"], config["text_config"]
        dim = config["projection_dim"]
        for name, tower in (("vision_config", v), ("text_config", t)):
            if tower.get("hidden_act", "quick_gelu") not in ACTIVATIONS:
                raise CheckpointError(
                    f"config.json {name}.hidden_act={tower['hidden_act']!r}; zeroseg implements "
                    f"{ACTIVATIONS}"
                )
        return CLIPConfig(
            vision=CLIPVisionConfig(
                image_size=v["image_size"],
                patch_size=v["patch_size"],
                width=v["hidden_size"],
                layers=v["num_hidden_layers"],
                heads=v["num_attention_heads"],
                mlp_ratio=v["intermediate_size"] / v["hidden_size"],
                output_dim=dim,
                act=v.get("hidden_act", "quick_gelu"),
                layer_norm_eps=v.get("layer_norm_eps", 1e-5),
            ),
            text=CLIPTextConfig(
                context_length=t["max_position_embeddings"],
                vocab_size=t["vocab_size"],
                width=t["hidden_size"],
                layers=t["num_hidden_layers"],
                heads=t["num_attention_heads"],
                output_dim=dim,
                mlp_ratio=t["intermediate_size"] / t["hidden_size"],
                act=t.get("hidden_act", "quick_gelu"),
                layer_norm_eps=t.get("layer_norm_eps", 1e-5),
            ),
        )
    except KeyError as err:
        raise CheckpointError(f"config.json lacks the CLIP field {err}") from err


def _config_differences(declared: CLIPConfig, inferred: CLIPConfig) -> list[str]:
    out = []
    for tower in ("vision", "text"):
        a, b = asdict(getattr(declared, tower)), asdict(getattr(inferred, tower))
        out += [f"{tower}.{k}: declared {a[k]}, weights give {b[k]}" for k in a if a[k] != b[k]]
    return out


def _check_state_dict(
    expected: Mapping[str, Tensor],
    state_dict: Mapping[str, Tensor],
    *,
    source: str,
    file_name: Callable[[str], str],
) -> None:
    """Raises ``CheckpointError`` unless keys and shapes match exactly."""

    def name(key: str) -> str:
        theirs = file_name(key)
        return key if theirs == key else f"{theirs} (zeroseg: {key})"

    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{source}: the weights do not match the CLIP architecture they imply"]
    lines += [f"  missing: {name(k)}, expected shape {tuple(expected[k].shape)}" for k in missing]
    lines += [f"  unexpected: {name(k)}, shape {tuple(state_dict[k].shape)}" for k in unexpected]
    lines += [
        f"  wrong shape: {name(k)}: file {tuple(state_dict[k].shape)}, "
        f"model expects {tuple(expected[k].shape)}"
        for k in misshaped
    ]
    raise CheckpointError("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Inert stand-in for a TorchScript class instance: it only records its attributes."""

    type_name = ""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(
                f"TorchScript object {self.type_name} has custom state; only plain modules "
                "(attribute dicts) can be read without running the archive's code"
            )
        self.attributes = state


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _rebuild_tensor(storage: Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> Tensor:
    return torch.as_strided(storage, size, stride, offset)


def _rebuild_parameter(data: Tensor, *_: Any) -> Tensor:
    return data


def _identity_first(value: Any, *_: Any) -> Any:
    return value


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: tensors, containers and attribute dicts only."""

    _SAFE = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
        ("torch.jit._pickle", "restore_type_tag"): _identity_first,
        ("torch.jit._pickle", "build_intlist"): list,
        ("torch.jit._pickle", "build_doublelist"): list,
        ("torch.jit._pickle", "build_boollist"): list,
        ("torch.jit._pickle", "build_tensorlist"): list,
        ("torch.jit._pickle", "build_genericlist"): list,
    }

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._source = source
        self._storages: dict[str, Tensor] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._SAFE:
            return self._SAFE[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            full = f"{module}.{name}"
            if full not in self._classes:
                self._classes[full] = type(name, (_ScriptObject,), {"type_name": full})
            return self._classes[full]
        raise CheckpointError(
            f"{self._source}: refusing to load the global {module}.{name} from a TorchScript "
            "archive (only tensors and module attributes are read)"
        )

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._source}: unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._source}: unsupported storage type {storage_type!r}")
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._prefix}data/{key}"))
            dtype = storage_type.dtype
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if flat.numel() != numel:
                raise CheckpointError(
                    f"{self._source}: storage {key} holds {flat.numel()} elements, expected {numel}"
                )
            self._storages[key] = flat
        return self._storages[key]


def read_torchscript_tensors(path: str | Path) -> dict[str, Tensor]:
    """All tensor attributes of a TorchScript archive's module tree, by dotted attribute path.

    Runs no code from the archive (see the module docstring). Non-weight tensor attributes
    (OpenAI's ``attn_mask``) are included; the format's remapping drops them.

    Raises:
        CheckpointError: not a TorchScript archive, big-endian data, or a disallowed global.
    """
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        roots = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(roots) != 1 or f"{roots[0][: -len('data.pkl')]}constants.pkl" not in names:
            raise CheckpointError(f"{path}: not a TorchScript archive (no <name>/data.pkl)")
        prefix = roots[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") != b"little":
            raise CheckpointError(f"{path}: big-endian archives are not supported")
        root = _RestrictedUnpickler(archive.read(roots[0]), archive, prefix, str(path)).load()
    tensors: dict[str, Tensor] = {}

    def walk(obj: Any, at: str) -> None:
        for attr, value in getattr(obj, "attributes", {}).items():
            if isinstance(value, Tensor):
                tensors[at + attr] = value
            elif isinstance(value, _ScriptObject):
                walk(value, f"{at}{attr}.")

    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"{path}: the archive's root is not a module")
    walk(root, "")
    return tensors


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") and n.count("/") == 1 for n in archive.namelist())


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """A training checkpoint's state dict: {"state_dict": ...} and DDP "module." prefixes."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _layout(keys: list[str], path: Path) -> str:
    if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        return "hf"
    if "text.token_embedding.weight" in keys:
        return "zeroseg"
    if any(k.startswith("visual.") for k in keys):
        return "openai"
    raise CheckpointError(
        f"{path}: not a CLIP checkpoint in a known layout (OpenAI, Hugging Face, zeroseg); "
        f"first keys: {sorted(keys)[:8]}"
    )


@dataclass
class ClipCheckpoint:
    state_dict: dict[str, Tensor]  # zeroseg keys
    layout: str  # "openai", "hf" or "zeroseg": the naming of the file's keys
    declared: CLIPConfig | None  # architecture stated by the file (config.json or metadata)
    source: str  # path, for messages


def _read_hf_directory(path: Path) -> ClipCheckpoint:
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type", "clip") != "clip":
        raise CheckpointError(
            f"{path}/config.json: model_type {config.get('model_type')!r}, expected 'clip'"
        )
    if (path / "model.safetensors").is_file():
        raw, _ = _read_safetensors(path / "model.safetensors")
    elif (path / "model.safetensors.index.json").is_file():
        index = json.loads((path / "model.safetensors.index.json").read_text())
        raw = {}
        for shard in sorted(set(index["weight_map"].values())):
            raw.update(_read_safetensors(path / shard)[0])
    elif (path / "pytorch_model.bin").is_file():
        raw = _unwrap(
            torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True), path
        )
    else:
        raise CheckpointError(
            f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
        )
    return ClipCheckpoint(hf_to_zeroseg(raw), "hf", clip_config_from_hf(config), str(path))


def read_clip_checkpoint(path: str | Path) -> ClipCheckpoint:
    """Reads CLIP weights from a file or Hugging Face directory into zeroseg keys.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: unknown format or layout, or unmappable keys.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path}: a directory must be a Hugging Face CLIP model (config.json + weights)"
            )
        return _read_hf_directory(path)
    if not path.is_file():
        from zeroseg.sources import missing_file

        raise missing_file("clip", path)
    declared = None
    if path.suffix == ".safetensors":
        raw, metadata = _read_safetensors(path)
        if CONFIG_METADATA_KEY in metadata:
            try:
                cfg = json.loads(metadata[CONFIG_METADATA_KEY])
                declared = CLIPConfig(
                    vision=CLIPVisionConfig(**cfg["vision"]), text=CLIPTextConfig(**cfg["text"])
                )
            except (ValueError, TypeError, KeyError) as err:
                raise CheckpointError(
                    f"{path}: invalid {CONFIG_METADATA_KEY} metadata: {err}"
                ) from err
    elif _is_torchscript(path):
        raw = read_torchscript_tensors(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # torch's message is a dozen lines advising weights_only=False (never here); keep
            # only its unpickler's diagnosis.
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            cause = next((ln for ln in lines if "Unpickler error" in ln), None)
            cause = lines[lines.index(cause) + 1] if cause and cause.endswith(":") else cause
            raise CheckpointError(
                f"{path}: not a CLIP checkpoint zeroseg can read (not safetensors, TorchScript, "
                f"or a state dict loadable with torch.load(weights_only=True), which never "
                f"unpickles code){': ' + cause if cause else ''}"
            ) from None
        except (RuntimeError, EOFError, ValueError, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"{path}: not a CLIP checkpoint zeroseg can read (corrupt or not a torch "
                f"file): {first}"
            ) from None
        raw = _unwrap(obj, path)
    layout = _layout(list(raw), path)
    remap = {"openai": openai_to_zeroseg, "hf": hf_to_zeroseg, "zeroseg": dict}[layout]
    return ClipCheckpoint(remap(raw), layout, declared, str(path))


def load_clip(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    config: CLIPConfig | None = None,
) -> CLIP:
    """Builds a CLIP from local weights, strictly.

    Args:
        path: an OpenAI checkpoint (TorchScript ``.pt`` or state dict), a ``.safetensors`` file,
            or a Hugging Face CLIP directory.
        device: where the model goes.
        dtype: parameter dtype (OpenAI's archives are fp16; CLIP is used in fp32 or autocast).
        config: the expected architecture. Needed only for what shapes cannot tell (heads when
            not width // 64, a GELU activation) in files without a config; it is cross-checked
            against the weights.

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: format, key or shape problems, each key named.
    """
    ckpt = read_clip_checkpoint(path)
    declared = config or ckpt.declared
    inferred = infer_clip_config(ckpt.state_dict, template=declared)
    if declared is not None:
        diffs = _config_differences(declared, inferred)
        if diffs:
            what = "the given config" if config is not None else "the file's config"
            raise CheckpointError(
                f"{ckpt.source}: {what} disagrees with the weights' shapes: " + "; ".join(diffs)
            )
    with torch.device("meta"):
        skeleton = CLIP.from_config(inferred)
    file_name = {
        "openai": _zeroseg_to_openai_name,
        "hf": lambda k: " / ".join(_zeroseg_to_hf_names(k)),
        "zeroseg": lambda k: k,
    }[ckpt.layout]
    _check_state_dict(
        skeleton.state_dict(), ckpt.state_dict, source=ckpt.source, file_name=file_name
    )
    # Every parameter is overwritten below, so skip the random initialisation.
    model = skeleton.to_empty(device="cpu")
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def save_clip_safetensors(model: CLIP, path: str | Path) -> None:
    """Writes a CLIP's weights (zeroseg keys) and its config to a ``.safetensors`` file."""
    config = model.config
    metadata = {
        CONFIG_METADATA_KEY: json.dumps(
            {"vision": asdict(config.vision), "text": asdict(config.text)}
        )
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)
