"""``zeroseg data check`` and ``zeroseg data prepare``: validate a dataset layout, convert labels.

:func:`check_dataset` reads every sample of a real dataset the way the loader does and reports *all*
problems at once, grouped by kind with counts: a missing directory or split list, missing image or
label files, unreadable (corrupt, truncated, wrong mode) files, label values outside the dataset's
id scheme, and images whose label has another size.

:func:`prepare` does the label conversions the papers' repositories do with scripts:

- ``coco_stuff``: raw ``stuffthingmaps`` PNGs (COCO id - 1, 182 ids) -> ``*_labelTrainIds.png``
  with the 171 train ids (mmseg ``tools/convert_datasets/coco_stuff164k.py``);
- ``context``: the full 459-class annotation (``trainval/*.mat`` with a ``LabelMap``, or PNGs
  holding the same ids) -> ``SegmentationClassContext/*.png`` with 0 background and 1-59 (mmseg
  ``tools/convert_datasets/pascal_context.py``), and the split lists from VOC2010's
  ``ImageSets/Main/{train,val}.txt`` when they are missing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from zeroseg.data.io import ImageError, read_label
from zeroseg.data.real import coco_stuff as coco_stuff_mod
from zeroseg.data.real import context as context_mod
from zeroseg.data.real import get_builder
from zeroseg.data.real.base import LabelRangeError, LayoutError, apply_table
from zeroseg.data.real.items import KINDS, Problem, check_item


@dataclass
class Report:
    """The result of :func:`check_dataset`.

    Attributes:
        dataset: dataset name.
        root: the checked root directory.
        samples: number of samples checked per split.
        problems: every problem found.
    """

    dataset: str
    root: str
    samples: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Number of problems of each kind (kinds without problems are left out)."""
        c = Counter(p.kind for p in self.problems)
        return {k: c[k] for k in KINDS if c[k]}

    def format(self, *, examples: int = 5) -> str:
        """A human-readable summary: sample counts, then each kind with a count and examples."""
        lines = [f"{self.dataset} at {self.root}"]
        for split, n in self.samples.items():
            lines.append(f"  {split}: {n} samples checked")
        if self.ok:
            lines.append("  no problem found")
            return "\n".join(lines)
        lines.append(f"  {len(self.problems)} problems:")
        for kind, n in self.counts().items():
            lines.append(f"  {kind}: {n}")
            shown = [p for p in self.problems if p.kind == kind][:examples]
            for p in shown:
                lines.append(f"    [{p.split}] {p.detail}")
            if n > len(shown):
                lines.append(f"    ... and {n - len(shown)} more")
        return "\n".join(lines)


def check_dataset(
    name: str,
    root: str | Path,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    limit: int | None = None,
    progress: bool = False,
    fold: int | None = None,
) -> Report:
    """Checks a dataset's layout and every sample's files; never stops at the first problem.

    Args:
        name: a dataset name of :data:`zeroseg.data.real.DATASETS`.
        root: the dataset root directory.
        splits: which splits to check.
        limit: check only the first ``limit`` samples of each split.
        progress: show a progress bar.
        fold: the fold of PASCAL-5i / COCO-20i (default 0: every fold reads the same files).
    """
    from zeroseg.data.real import FOLDED

    build = get_builder(name, fold=(fold or 0) if name in FOLDED else fold)
    report = Report(name, str(root))
    if not Path(root).is_dir():
        report.problems.append(
            Problem("missing layout", "-", str(root), f"dataset root {root} does not exist")
        )
        return report
    for split in splits:
        try:
            ds = build(root, split, limit=limit)
        except LayoutError as e:
            report.problems.append(Problem("missing layout", split, str(root), str(e)))
            continue
        except ImageError as e:  # an unreadable index file (COCO panoptic json)
            report.problems.append(Problem("unreadable label", split, str(root), str(e)))
            continue
        report.samples[split] = len(ds)
        for i, item in enumerate(
            tqdm(ds.items, desc=f"check {name}/{split}", disable=not progress)
        ):
            report.problems.extend(check_item(ds, i, item, split))
    return report


# ----------------------------------------------------------------------------- prepare


@dataclass
class PrepareResult:
    """What :func:`prepare` did.

    Attributes:
        written: label files written.
        skipped: outputs that existed already (kept unless ``force``).
        failed: one message per input file that could not be converted.
        notes: other things done or left to do (split lists written, ...).
    """

    written: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"written {self.written}, kept {self.skipped} existing, failed {len(self.failed)}"]
        lines += [f"  failed: {m}" for m in self.failed[:20]]
        if len(self.failed) > 20:
            lines.append(f"  ... and {len(self.failed) - 20} more")
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


PREPARABLE = ("coco_stuff", "context")


def prepare(
    name: str,
    root: str | Path,
    *,
    source: str | Path | None = None,
    force: bool = False,
    progress: bool = False,
) -> PrepareResult:
    """Converts a dataset's raw labels into the layout the loader reads.

    Args:
        name: ``coco_stuff`` or ``context``.
        root: the dataset root (outputs are written inside it).
        source: where the raw labels are, if not the default: COCO-Stuff reads
            ``root/annotations/{train2017,val2017}/*.png``; Context reads ``root/trainval``
            (``*.mat`` with ``LabelMap``, or 459-id PNGs).
        force: overwrite existing outputs.
        progress: show progress bars.
    """
    root = Path(root)
    if name == "coco_stuff":
        return _prepare_coco_stuff(root, force=force, progress=progress, source=source)
    if name == "context":
        return _prepare_context(
            root, Path(source) if source else root / "trainval", force=force, progress=progress
        )
    get_builder(name)  # an unknown name lists the valid ones
    raise ValueError(f"{name} needs no label conversion; `data prepare` handles {list(PREPARABLE)}")


def _save_label(label: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(label.astype(np.uint8), "L").save(tmp, format="PNG")
    tmp.replace(path)


def _prepare_coco_stuff(root: Path, *, force: bool, progress: bool, source) -> PrepareResult:
    result = PrepareResult()
    suffix = coco_stuff_mod.TRAIN_ID_SUFFIX
    base = Path(source) if source else root / "annotations"
    for split in ("train2017", "val2017"):
        in_dir, out_dir = base / split, root / "annotations" / split
        if not in_dir.is_dir():
            result.notes.append(f"{in_dir} does not exist: {split} skipped")
            continue
        raws = sorted(p for p in in_dir.glob("*.png") if not p.name.endswith(suffix))
        for path in tqdm(raws, desc=f"coco_stuff {split}", disable=not progress):
            out = out_dir / f"{path.stem}{suffix}"
            if out.exists() and not force:
                result.skipped += 1
                continue
            try:
                raw = read_label(path)
                label = apply_table(
                    raw, coco_stuff_mod.RAW_TABLE, where=str(path), scheme=coco_stuff_mod.RAW_SCHEME
                )
            except ImageError as e:
                result.failed.append(str(e))
                continue
            _save_label(label, out)
            result.written += 1
    return result


CONTEXT_MAX_ID = 459


def context_table() -> np.ndarray:
    """(460,) uint8: 459-class id -> Context-59 file value (0 background/other, 1-59 the classes)."""
    table = np.zeros(CONTEXT_MAX_ID + 1, np.uint8)
    for k, (cid, _) in enumerate(context_mod.CONTEXT459_IDS):
        table[cid] = k + 1
    return table


def read_context459(path: Path) -> np.ndarray:
    """(H, W) int64 459-class ids from a ``.mat`` (``LabelMap``) or a PNG holding the same ids."""
    if path.suffix == ".mat":
        from scipy.io import loadmat

        try:
            mat = loadmat(path)
        except (OSError, ValueError, TypeError) as e:
            raise ImageError(f"{path}: not a readable .mat file ({e})") from None
        if "LabelMap" not in mat:
            raise ImageError(
                f"{path}: has no 'LabelMap' (keys: {sorted(k for k in mat if not k.startswith('__'))})"
            )
        ids = np.asarray(mat["LabelMap"]).astype(np.int64)
    else:
        try:
            with Image.open(path) as img:
                if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                    raise ImageError(
                        f"{path}: a 459-class label map must be single-channel, got mode {img.mode}"
                    )
                ids = np.asarray(img).astype(np.int64)
        except (OSError, SyntaxError) as e:
            raise ImageError(f"{path}: corrupt or unreadable label file ({e})") from None
    if ids.ndim != 2:
        raise ImageError(f"{path}: expected a 2-D label map, got shape {ids.shape}")
    bad = np.unique(ids[(ids < 0) | (ids > CONTEXT_MAX_ID)])
    if len(bad):
        raise LabelRangeError(
            f"{path}: values {bad.tolist()[:10]} are outside the 459 Context ids (0-459)"
        )
    return ids


def _prepare_context(root: Path, source: Path, *, force: bool, progress: bool) -> PrepareResult:
    result = PrepareResult()
    if not source.is_dir():
        raise LayoutError(
            f"raw Context annotations {source} do not exist (expected trainval/*.mat from trainval.tar.gz)"
        )
    files = sorted(p for p in source.iterdir() if p.suffix in (".mat", ".png"))
    if not files:
        raise LayoutError(f"{source} holds no .mat or .png file")
    table = context_table()
    out_dir = root / context_mod.LABEL_DIR
    done = set()
    for path in tqdm(files, desc="context 459->59", disable=not progress):
        out = out_dir / f"{path.stem}.png"
        done.add(path.stem)
        if out.exists() and not force:
            result.skipped += 1
            continue
        try:
            label = table[read_context459(path)]
        except ImageError as e:
            result.failed.append(str(e))
            done.discard(path.stem)
            continue
        _save_label(label, out)
        result.written += 1
    lists = root.joinpath(*context_mod.LIST_DIR)
    for split in context_mod.SPLITS:
        target = lists / f"{split}.txt"
        if target.is_file():
            continue
        voc_list = root / "ImageSets" / "Main" / f"{split}.txt"
        if not voc_list.is_file():
            result.notes.append(
                f"{target} is missing and {voc_list} too: write the {split} ids there"
            )
            continue
        ids = [line.split()[0] for line in voc_list.read_text().splitlines() if line.strip()]
        ids = [i for i in ids if i in done]
        lists.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(f"{i}\n" for i in ids))
        result.notes.append(f"wrote {target} ({len(ids)} ids from {voc_list} with annotations)")
    return result
