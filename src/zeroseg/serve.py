"""``zeroseg serve``: the logic behind the local web page that segments any image with any names.

The open-vocabulary segmentation papers ship their demos as Gradio pages (SAN, FC-CLIP, ODISE,
OVSeg and CLIPSeg on Hugging Face Spaces): upload an image, type the classes, look at the labels.
This module is everything such a page does apart from the layout: finding trained models,
reading and checking the input, segmenting, colouring, legends, the label PNG and the
ShapeWorld examples. It imports no web framework, so it is tested without a server;
:mod:`zeroseg.serve_page` lays it out with Gradio (the optional extra ``zeroseg[web]``).

Every bad input (a file that is not an image, an image above the pixel limit, empty or
duplicated names, more names than a label map can hold) raises a :class:`ServeError` (or another
``zeroseg.errors`` exception) whose one-line message the page shows; nothing is left half-done,
so the next request starts clean.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from zeroseg.data.classes import ClassSplit, validate_class_names
from zeroseg.data.io import read_image
from zeroseg.engine.checkpoint import CheckpointError, read_metadata
from zeroseg.viz import palette

DEFAULT_RUNS = Path("runs/demo")  # where ``make demo`` writes its models
MAX_NAMES = 255  # the label PNG is 8-bit and 255 is the ignore value, so 255 names at most
DEFAULT_MAX_PIXELS = 1024 * 1024  # larger uploads are refused: whole-image CPU inference
OVERLAY_ALPHA = 0.55  # the same blend as ``zeroseg predict``'s overlays
DISPLAY_SIDE = 256  # small images are enlarged (nearest neighbour) to at least this for display
NO_MODELS = (
    "No trained models found in runs/demo. Run `make demo` to train them (about 30 minutes on "
    "2 cores), or `zeroseg train PRESET` and then `zeroseg serve runs/NAME`."
)


class ServeError(ValueError):
    """A request the page cannot answer; the message says what was wrong and what is expected."""


@dataclass(frozen=True)
class ModelEntry:
    """A trained model found on disk, described from its checkpoint header alone.

    Attributes:
        label: how the page names it (the method; plus the run directory when a method repeats).
        path: its ``model.safetensors``.
        method: the method name recorded in the checkpoint.
        seen: class names it was trained with pixel labels for.
        unseen: class names of its training vocabulary held out as unseen.
        supervised: trained with every class labelled (the oracle), held-out names included.
        dataset: the dataset of its config (``shapeworld``, ``voc``, ...).
        world: the ShapeWorld spec file it was trained on (None: the shipped world).
    """

    label: str
    path: Path
    method: str
    seen: tuple[str, ...]
    unseen: tuple[str, ...]
    supervised: bool
    dataset: str
    world: str | None


def read_entry(path: Path, label: str | None = None) -> ModelEntry:
    """Describes a checkpoint from its safetensors header, without reading its tensors."""
    meta = read_metadata(path)
    for key in ("method", "config", "split"):
        if key not in meta:
            raise CheckpointError(f"{path} lacks {key!r}: it is not a zeroseg model checkpoint")
    from zeroseg.methods import METHODS

    split = ClassSplit.from_dict(meta["split"])
    data = meta["config"].get("data") or {}
    method = METHODS.get(meta["method"])
    return ModelEntry(
        label=label or meta["method"],
        path=path,
        method=meta["method"],
        seen=tuple(split.seen_names),
        unseen=tuple(split.unseen_names),
        supervised=method is not None and method.protocol == "supervised",
        dataset=data.get("dataset", "shapeworld"),
        world=data.get("world"),
    )


def find_models(paths: Sequence[str | Path] = ()) -> list[ModelEntry]:
    """The models behind the given paths, each described from its checkpoint header.

    Args:
        paths: checkpoints, run directories, or directories searched recursively for
            ``model.safetensors`` (e.g. ``runs/demo``). Empty: ``runs/demo``, if it holds any
            model (an empty list otherwise, and the caller shows :data:`NO_MODELS`).

    Returns:
        One entry per distinct checkpoint, labelled by method; when two share a method, each
        label adds its run directory's name.

    Raises:
        ServeError: a given path does not exist or holds no model.
    """
    explicit = bool(paths)
    files: list[Path] = []
    for root in [Path(p) for p in paths] or [DEFAULT_RUNS]:
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            found = sorted(root.rglob("model.safetensors"))
            if not found and explicit:
                raise ServeError(
                    f"{root}: no model.safetensors in it or below (`make demo` or "
                    "`zeroseg train PRESET` writes one)"
                )
            files += found
        elif explicit:
            raise ServeError(
                f"{root} does not exist: expected a model.safetensors or a run directory"
            )
    unique = list({f.resolve(): f for f in files}.values())
    entries = [read_entry(f) for f in unique]
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.method] = counts.get(e.method, 0) + 1
    labelled = [
        read_entry(e.path, f"{e.method} ({e.path.parent.name})") if counts[e.method] > 1 else e
        for e in entries
    ]
    labels = [e.label for e in labelled]
    if len(set(labels)) != len(labels):  # same method in run directories of the same name
        labelled = [read_entry(e.path, f"{e.method} ({e.path})") for e in labelled]
    return labelled


def parse_names(text: str | None) -> tuple[str, ...]:
    """Comma-separated class names, checked: none empty, no duplicates, at most ``MAX_NAMES``."""
    raw = (text or "").split(",")
    if not any(n.strip() for n in raw):
        raise ServeError("no class names: type at least one, separated by commas")
    names = validate_class_names(raw, what="class names")
    if len(names) > MAX_NAMES:
        raise ServeError(
            f"{len(names)} class names: a label map holds at most {MAX_NAMES} (8-bit PNG, 255 "
            "is the ignore value)"
        )
    return names


def name_roles(names: Sequence[str], entry: ModelEntry) -> list[str]:
    """Per name: ``seen``, ``unseen (held out)`` or ``unseen (new name)`` for this model.

    A name counts as seen when it matches (case-insensitively) a class the model was trained
    with pixel labels, as :meth:`Predictor.seen_mask` decides; the oracle was trained with the
    held-out classes labelled too, so they are seen for it.
    """
    seen = {n.lower() for n in (*entry.seen, *(entry.unseen if entry.supervised else ()))}
    held_out = {n.lower() for n in entry.unseen} - seen
    return [
        "seen"
        if n.lower() in seen
        else "unseen (held out)"
        if n.lower() in held_out
        else "unseen (new name)"
        for n in names
    ]


def enlarge(image: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """Repeats pixels by the smallest integer factor that brings the long side to ``side``."""
    factor = max(1, math.ceil(side / max(image.shape[:2])))
    return image.repeat(factor, 0).repeat(factor, 1) if factor > 1 else image


def overlay(image: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W, 3) image blended with the colours of its (H, W) labels, enlarged for display."""
    colors = palette(num_classes)[np.asarray(label, dtype=np.int64)]
    blend = (
        image.astype(np.float32) * (1 - OVERLAY_ALPHA) + colors.astype(np.float32) * OVERLAY_ALPHA
    )
    return enlarge(blend.astype(np.uint8))


def write_label_png(label: np.ndarray, names: Sequence[str], path: Path) -> Path:
    """Writes the label map as an indexed PNG, atomically.

    Pixel value ``k`` is ``names[k]``; the PNG palette holds the page's colours (so viewers show
    the legend's colours) and a ``zeroseg:classes`` text chunk holds the names in order.
    """
    img = Image.frombytes("P", label.shape[::-1], np.ascontiguousarray(label, np.uint8).tobytes())
    img.putpalette(palette(len(names)).ravel().tolist())
    info = PngImagePlugin.PngInfo()
    info.add_text("zeroseg:classes", json.dumps(list(names)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    img.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)
    return path


@dataclass
class Segmentation:
    """One model's answer for one image and vocabulary.

    Attributes:
        model: the model's label.
        names: the class names, in label order.
        roles: per name, seen or unseen for this model (see :func:`name_roles`).
        label: (H, W) uint8, ``k`` means ``names[k]``.
        overlay: the display image (see :func:`overlay`).
        shares: (K,) percent of the image's pixels given to each name.
        seconds: wall time of the prediction (text embedding included, model loading not).
    """

    model: str
    names: tuple[str, ...]
    roles: list[str]
    label: np.ndarray
    overlay: np.ndarray
    shares: np.ndarray
    seconds: float

    def summary(self) -> str:
        h, w = self.label.shape
        n_seen = sum(r == "seen" for r in self.roles)
        return (
            f"{self.model}: {w}×{h} px, {len(self.names)} names ({n_seen} seen, "
            f"{len(self.names) - n_seen} unseen) in {self.seconds:.2f} s"
        )


SCROLL = "max-height:28em;overflow-y:auto"  # a long vocabulary scrolls instead of growing the page


def _swatch(rgb: np.ndarray) -> str:
    r, g, b = (int(v) for v in rgb)
    return (
        f'<span class="zs-swatch" style="display:inline-block;width:1.1em;height:1.1em;'
        f'border:1px solid #0005;vertical-align:middle;background:rgb({r},{g},{b})"></span>'
    )


def legend_html(seg: Segmentation) -> str:
    """A table: colour, class name, seen/unseen for the model, share of the pixels.

    Rows run from the largest share down (names the model gave no pixel last, in typed order),
    so that the classes in the picture come first however long the vocabulary.
    """
    pal = palette(len(seg.names))
    order = sorted(range(len(seg.names)), key=lambda k: -seg.shares[k])  # stable: ties as typed
    rows = "".join(
        f'<tr data-class="{escape(seg.names[k])}"><td>{_swatch(pal[k])}</td><td class="zs-name">'
        f'{escape(seg.names[k])}</td><td>{escape(seg.roles[k])}</td><td style="text-align:right">'
        f"{seg.shares[k]:.1f} %</td></tr>"
        for k in order
    )
    return (
        f'<div style="{SCROLL}"><table class="zs-legend"><thead><tr><th></th><th>class</th>'
        f"<th>in training</th><th>pixels</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def compare_html(segs: Sequence[Segmentation]) -> str:
    """Names down, models across: each model's pixel share per name, and its time."""
    names = segs[0].names
    pal = palette(len(names))
    head = "".join(f"<th>{escape(s.model)}</th>" for s in segs)
    rows = "".join(
        f'<tr data-class="{escape(n)}"><td>{_swatch(pal[k])}</td><td class="zs-name">{escape(n)}'
        "</td>" + "".join(f'<td style="text-align:right">{s.shares[k]:.1f} %</td>' for s in segs)
        for k, n in enumerate(names)
    )
    times = "".join(f'<td style="text-align:right">{s.seconds:.2f} s</td>' for s in segs)
    return (
        f'<div style="{SCROLL}"><table class="zs-compare"><thead><tr><th></th><th>class</th>'
        f"{head}</tr></thead><tbody>{rows}<tr><td></td><td>time</td>{times}</tr></tbody></table>"
        "</div>"
    )


def marks_html(text: str | None, entry: ModelEntry | None) -> str:
    """The names as typed, each marked seen or unseen for the chosen model (or the problem)."""
    if not (text or "").strip():
        return "<i>Type class names, separated by commas.</i>"
    try:
        names = parse_names(text)
    except ValueError as e:
        return f'<span class="zs-marks-error">{escape(str(e))}</span>'
    if entry is None:
        return escape(", ".join(names))
    chips = []
    for name, role in zip(names, name_roles(names, entry), strict=True):
        colour = "#1a7f37" if role == "seen" else "#8250df"
        chips.append(
            f'<span class="zs-mark" data-role="{escape(role)}" style="border:1px solid {colour};'
            f"color:{colour};border-radius:0.6em;padding:0 0.4em;margin:0 0.25em 0.25em 0;"
            f'display:inline-block;font-size:0.85em">{escape(name)}: {escape(role)}</span>'
        )
    return (
        f'<div style="max-height:9.5em;overflow-y:auto">{"".join(chips)}</div>'
        f"<small>seen / unseen for {escape(entry.label)}</small>"
    )


@dataclass(frozen=True)
class Example:
    """A ShapeWorld validation image offered on the page, with its ground truth."""

    image: Path
    truth: Path  # the ground-truth labels over the image, in the page's colours for ``names``
    names: tuple[str, ...]
    caption: str


def make_examples(spec, directory: Path, count: int = 6) -> list[Example]:
    """Renders the first ``count`` validation images of a ShapeWorld spec as PNG files."""
    from zeroseg.data.shapeworld.render import render

    names = tuple(spec.class_names)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        r = render(spec, "val", i)
        image, truth = (
            directory / f"{spec.name}-val-{i}.png",
            directory / f"{spec.name}-val-{i}-truth.png",
        )
        Image.fromarray(r.image).save(image)
        Image.fromarray(overlay(r.image, r.semantic, len(names))).save(truth)
        present = ", ".join(names[c] for c in np.unique(r.semantic))
        out.append(Example(image, truth, names, f"val {i}: {present}"))
    return out


def examples_world(entries: Sequence[ModelEntry]):
    """The ShapeWorld spec the examples come from: the first model's world, else the shipped one.

    Returns:
        (spec, note): ``note`` says why the shipped world stands in, or is None.
    """
    from zeroseg.data.shapeworld import load_spec
    from zeroseg.data.shapeworld.spec import SpecError

    for e in entries:
        if e.dataset == "shapeworld":
            try:
                return load_spec(e.world), None
            except SpecError as err:
                return load_spec(None), f"examples from the shipped world ({err})"
    return load_spec(None), None


class ServeApp:
    """The page's state: the models found (loaded on first use) and where outputs go.

    Args:
        entries: the models offered, from :func:`find_models`.
        workdir: where label PNGs are written (one fresh sub-directory per request).
        device: torch device for every model.
        max_pixels: images with more pixels are refused with this limit named.
    """

    def __init__(
        self,
        entries: Sequence[ModelEntry],
        *,
        workdir: Path,
        device: str = "cpu",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        if max_pixels < 1:
            raise ServeError(f"--max-pixels must be a positive pixel count, got {max_pixels}")
        self.entries = {e.label: e for e in entries}
        self.workdir, self.device, self.max_pixels = Path(workdir), device, max_pixels
        self._predictors: dict = {}
        self._embedders: dict = {}
        self._lock = threading.Lock()
        self._requests = 0

    def predictor(self, label: str):
        """The model called ``label``, loaded once; models with one text config share its encoder."""
        from zeroseg.predict import Predictor
        from zeroseg.runner import Embedder, load_model

        if label not in self.entries:
            if not self.entries:
                raise ServeError(NO_MODELS)
            raise ServeError(f"no model {label!r}; this server has {list(self.entries)}")
        with self._lock:
            if label not in self._predictors:
                method, cfg, split, _ = load_model(self.entries[label].path, device=self.device)
                key = (cfg.text.encoder, cfg.text.templates)
                embed = self._embedders.setdefault(key, Embedder(cfg.text))
                self._predictors[label] = Predictor(
                    method, cfg, split, device=self.device, embed=embed
                )
            return self._predictors[label]

    def warm(self) -> None:
        """Loads every model and its text encoder, so that the first request is as fast as any."""
        for label in self.entries:
            p = self.predictor(label)
            p.embed.encoder  # noqa: B018 - loads it: embeddings of new names need it at once
            p.embed(list(p.split.names))

    def read(self, path: str | Path | None) -> np.ndarray:
        """The uploaded image as (H, W, 3) uint8, refused above ``max_pixels``."""
        if path is None:
            raise ServeError("no image: upload one or click an example")
        name = Path(path).name
        try:
            with Image.open(path) as img:  # reads the header only: the size before any decoding
                w, h = img.size
        except Image.DecompressionBombError as e:
            raise ServeError(
                f"{name}: refused, {e}; this server takes at most {self.max_pixels:,} pixels"
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ServeError(
                f"{name} is not an image PIL can read (PNG, JPEG, BMP, WebP, TIFF, ...)"
            ) from None
        if w * h > self.max_pixels:
            raise ServeError(
                f"{name}: {w}×{h} is {w * h:,} pixels; this server takes at most "
                f"{self.max_pixels:,} (e.g. {math.isqrt(self.max_pixels)}×"
                f"{math.isqrt(self.max_pixels)}): downscale it, or restart with --max-pixels"
            )
        return read_image(path, alpha="drop", max_pixels=self.max_pixels)

    def segment(self, path, text: str | None, label: str | None) -> Segmentation:
        """Segments the image at ``path`` into the comma-separated names with one model."""
        names = parse_names(text)
        image = self.read(path)
        return self._segment(image, names, label)

    def compare(self, path, text: str | None, labels: Sequence[str] | None) -> list[Segmentation]:
        """The same image and names through two or more models, in the order given."""
        labels = list(dict.fromkeys(labels or []))
        if len(labels) < 2:
            raise ServeError(
                f"choose two or more models to compare ({len(labels)} chosen; this server has "
                f"{len(self.entries)})"
            )
        names = parse_names(text)
        image = self.read(path)
        return [self._segment(image, names, label) for label in labels]

    def _segment(
        self, image: np.ndarray, names: tuple[str, ...], label: str | None
    ) -> Segmentation:
        if not label:
            raise ServeError(NO_MODELS if not self.entries else "no model chosen")
        predictor = self.predictor(label)
        start = time.perf_counter()
        pred = predictor.predict(image, names)
        seconds = time.perf_counter() - start
        shares = np.bincount(pred.ravel(), minlength=len(names))[: len(names)] / pred.size * 100
        return Segmentation(
            model=label,
            names=names,
            roles=name_roles(names, self.entries[label]),
            label=pred,
            overlay=overlay(image, pred, len(names)),
            shares=shares,
            seconds=seconds,
        )

    def save_label(self, seg: Segmentation, source: str | Path | None) -> Path:
        """Writes ``seg``'s label PNG into a fresh directory (a download never changes later)."""
        with self._lock:
            self._requests += 1
            n = self._requests
        stem = Path(source).stem if source else "image"
        return write_label_png(
            seg.label, seg.names, self.workdir / f"{n:06d}" / f"{stem}_label.png"
        )
