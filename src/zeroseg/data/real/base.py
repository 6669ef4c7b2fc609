"""One file-list dataset for every real benchmark: images and label files in their standard layouts.

Each benchmark (``voc``, ``coco_stuff``, ``context``, ``coco_panoptic``) is a small configuration of
:class:`FileListDataset`: a list of ``(image, annotation)`` file pairs built from the benchmark's own
split files, and a 256-entry table that turns the label values written in the files into class
indices of the benchmark's class list (``255`` = ignore). The table is the whole "id scheme" of a
dataset, so loading, ``zeroseg data check`` and ``zeroseg data prepare`` all use the same data.

Samples match :class:`zeroseg.data.shapeworld.ShapeWorldDataset`: ``image`` (3, H, W) uint8,
``label`` (H, W) int64 full class indices with ``255`` ignore, ``id`` str, and for panoptic data
``panoptic`` (H, W) int64 segment ids (``0`` = void) and ``segments`` (n, 3) int64 rows
``(segment_id, class_index, is_thing)``. Samples are *not* augmented here: training augmentations
are ``f(sample, rng)`` functions (:mod:`zeroseg.data.transforms`) applied by the step loader, so
they are reproducible per ``(seed, step, index)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zeroseg.data.classes import ClassSplit
from zeroseg.data.io import ImageError, check_same_size, read_image, read_label

INVALID = -1  # entry of a label table for a value that must not occur in a label file


class LayoutError(FileNotFoundError):
    """A dataset root that lacks a directory or split file of the expected layout."""


class LabelRangeError(ImageError):
    """A label file holding values outside its dataset's id scheme."""


@dataclass(frozen=True)
class Item:
    """One sample on disk.

    Attributes:
        id: the sample's name (the file stem, as in the split lists).
        image: path of the image file.
        label: path of the annotation file (a label PNG, or a panoptic PNG).
        info: annotation records kept from an index file (COCO panoptic ``segments_info``).
    """

    id: str
    image: Path
    label: Path
    info: tuple = ()


def label_table(pairs: dict[int, int] | Sequence[tuple[int, int]]) -> np.ndarray:
    """(256,) int16 table from raw label values to class indices; unlisted values are invalid."""
    table = np.full(256, INVALID, dtype=np.int16)
    for raw, index in dict(pairs).items():
        table[int(raw)] = int(index)
    return table


def shifted_table(num_classes: int, *, zero: int = 255) -> np.ndarray:
    """Table of the "reduce zero label" schemes (VOC, Context): ``0 -> zero``, ``k -> k-1``, 255 kept."""
    pairs = {k: k - 1 for k in range(1, num_classes + 1)}
    pairs[0] = zero
    pairs[255] = 255
    return label_table(pairs)


def identity_table(num_classes: int) -> np.ndarray:
    """Table of files that already hold class indices (train ids) and ``255`` ignore."""
    pairs = {k: k for k in range(num_classes)}
    pairs[255] = 255
    return label_table(pairs)


def apply_table(raw: np.ndarray, table: np.ndarray, *, where: str, scheme: str) -> np.ndarray:
    """Maps raw label values through ``table``; any invalid value raises, naming the file.

    Args:
        raw: (H, W) uint8 values as stored in the file.
        table: (256,) int16 table from :func:`label_table`.
        where: the file, for the error message.
        scheme: how to describe the expected values (e.g. "VOC ids 0-20 and 255").

    Returns:
        (H, W) uint8 class indices with 255 ignore.
    """
    mapped = table[raw]
    if (mapped == INVALID).any():
        bad = np.unique(raw[mapped == INVALID])
        raise LabelRangeError(
            f"{where}: label values {bad.tolist()[:10]} are outside the id scheme ({scheme})"
        )
    return mapped.astype(np.uint8)


def read_split_list(path: Path) -> list[str]:
    """Sample ids of a split file (one per line; blank lines skipped)."""
    if not path.is_file():
        raise LayoutError(f"split list {path} does not exist")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise LayoutError(f"split list {path} is empty")
    return ids


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise LayoutError(f"{what} directory {path} does not exist")
    return path


class FileListDataset(torch.utils.data.Dataset):
    """A list of image/annotation files read into full-label samples.

    Args:
        items: the samples on disk, in split order.
        class_split: the benchmark's classes and its seen/unseen split.
        table: (256,) raw label value -> class index table (:func:`label_table`); ``None`` for
            subclasses that decode labels otherwise.
        scheme: a human description of the valid raw values, for errors.
        name: dataset name, prefixed to sample ids.
        split_name: "train" or "val".
        limit: keep only the first ``limit`` items (quick runs).
        train_transform: the augmentation the training loop should apply to this split
            (``f(sample, rng) -> sample``); ``None`` for evaluation splits. The dataset itself never
            applies it.
    """

    def __init__(
        self,
        items: Sequence[Item],
        *,
        class_split: ClassSplit,
        table: np.ndarray | None,
        scheme: str,
        name: str,
        split_name: str,
        limit: int | None = None,
        train_transform: Callable | None = None,
    ):
        if not items:
            raise LayoutError(f"{name}/{split_name}: the split lists no sample")
        self.items = list(items)[: limit if limit is not None else None]
        self.class_split, self.table, self.scheme = class_split, table, scheme
        self.name, self.split_name = name, split_name
        self.train_transform = train_transform

    def __len__(self) -> int:
        return len(self.items)

    def read_annotation(self, i: int) -> dict[str, np.ndarray]:
        """Decodes sample ``i``'s annotation: ``{"label": (H, W) uint8 class indices, 255 ignore}``.

        Panoptic datasets override this to add ``panoptic`` and ``segments``.
        """
        item = self.items[i]
        raw = read_label(item.label)
        return {"label": apply_table(raw, self.table, where=str(item.label), scheme=self.scheme)}

    def label(self, i: int) -> torch.Tensor:
        """(H, W) int64 full label map of sample ``i`` without decoding its image (protocol scans)."""
        return torch.from_numpy(self.read_annotation(i)["label"].astype(np.int64))

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        image = read_image(item.image, alpha="drop")
        ann = self.read_annotation(i)
        check_same_size(image, ann["label"], where=f"{item.image} / {item.label}")
        sample = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}
        sample["label"] = torch.from_numpy(ann["label"].astype(np.int64))
        for key in ("panoptic", "segments"):
            if key in ann:
                sample[key] = torch.from_numpy(ann[key].astype(np.int64))
        sample["id"] = f"{self.name}/{self.split_name}/{item.id}"
        return sample


def table_builder(
    name: str,
    items: Callable[[str | Path, str], Sequence[Item]],
    class_split: Callable[..., ClassSplit],
    table: np.ndarray,
    scheme: str,
) -> Callable[..., FileListDataset]:
    """The ``build(root, split, *, limit, train_transform)`` of a benchmark whose label files all
    go through one ``table``.

    Args:
        name: dataset name, prefixed to sample ids.
        items: ``items(root, split)``, the benchmark's samples on disk.
        class_split: its class split; keyword arguments ``build`` gets beyond ``limit`` and
            ``train_transform`` (a four-fold dataset's ``fold``) go here.
        table: (256,) raw label value -> class index table.
        scheme: a human description of the valid raw values, for errors.
    """

    dataset = functools.partial(FileListDataset, table=table, scheme=scheme, name=name)

    def build(
        root: str | Path,
        split: str,
        *,
        limit: int | None = None,
        train_transform: Callable | None = None,
        **split_args,
    ) -> FileListDataset:
        return dataset(
            items(root, split),
            class_split=class_split(**split_args),
            split_name=split,
            limit=limit,
            train_transform=train_transform,
        )

    return build
