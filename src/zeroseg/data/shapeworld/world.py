"""Generating, caching and loading ShapeWorld splits.

A split is generated once and cached under ``<cache>/shapeworld/<name>-<content key>/<split>.npz``
(the test split as ``test-<n>.npz``); the key hashes the whole spec but the test split's size, and
the generator version, so editing a spec makes a new world and never reuses stale images. Writes
are atomic (temporary file + rename).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from zeroseg.data.classes import ClassSplit
from zeroseg.data.shapeworld.render import SPLIT_IDS, render
from zeroseg.data.shapeworld.spec import SpecError, WorldSpec, load_spec
from zeroseg.paths import cache_dir


@dataclass
class WorldSplit:
    """All arrays of one split, in memory.

    Attributes:
        images: (N, S, S, 3) uint8.
        semantic: (N, S, S) uint8 class indices.
        panoptic: (N, S, S) int32 segment ids.
        segments: (M, 4) int32 rows ``(image_index, segment_id, class_index, is_thing)``.
        captions: N strings.
    """

    images: np.ndarray
    semantic: np.ndarray
    panoptic: np.ndarray
    segments: np.ndarray
    captions: list[str]

    def __len__(self) -> int:
        return len(self.images)


def split_size(spec: WorldSpec, split: str) -> int:
    sizes = {
        "train": spec.train_images,
        "val": spec.val_images,
        "test": spec.test_images,
        "caption": spec.caption_images,
    }
    if split not in sizes:
        raise ValueError(f"unknown ShapeWorld split {split!r}; valid: {sorted(sizes)}")
    return sizes[split]


def split_file(spec: WorldSpec, split: str) -> str:
    """The cache file name of a split: the test split's size is in its name, not in the world key."""
    return f"test-{spec.test_images}.npz" if split == "test" else f"{split}.npz"


def generate_split(
    spec: WorldSpec, split: str, *, n: int | None = None, progress: bool = True
) -> WorldSplit:
    """Renders a split (or its first ``n`` images) in memory."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown ShapeWorld split {split!r}; valid: {sorted(SPLIT_IDS)}")
    n = split_size(spec, split) if n is None else n
    s = spec.image_size
    images = np.empty((n, s, s, 3), np.uint8)
    semantic = np.empty((n, s, s), np.uint8)
    panoptic = np.empty((n, s, s), np.int32)
    segments, captions = [], []
    for i in tqdm(
        range(n), desc=f"ShapeWorld {spec.name}/{split}", disable=not progress, leave=False
    ):
        r = render(spec, split, i)
        images[i], semantic[i], panoptic[i] = r.image, r.semantic, r.panoptic
        segments.append(np.concatenate([np.full((len(r.segments), 1), i, np.int32), r.segments], 1))
        captions.append(r.caption)
    return WorldSplit(images, semantic, panoptic, np.concatenate(segments, 0), captions)


def world_dir(spec: WorldSpec, root: Path | None = None) -> Path:
    """``<cache>/shapeworld/<name>-<key>``; a name that would lead elsewhere is refused."""
    base = (root or cache_dir()) / "shapeworld"
    path = base / f"{spec.name}-{spec.content_key()}"
    if path.resolve().parent != base.resolve():
        raise SpecError(f"world name {spec.name!r} would place its files outside {base}")
    return path


def _atomic_savez(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_split(
    spec: WorldSpec, split: str, *, root: Path | None = None, progress: bool = True
) -> WorldSplit:
    """Returns a split from the cache, generating and caching it first when missing."""
    path = world_dir(spec, root) / split_file(spec, split)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                data = WorldSplit(
                    z["images"],
                    z["semantic"],
                    z["panoptic"],
                    z["segments"],
                    [str(c) for c in z["captions"]],
                )
        except (OSError, ValueError, KeyError) as e:
            raise RuntimeError(
                f"cached ShapeWorld split {path} is unreadable ({e}); delete it to regenerate"
            ) from None
        if len(data) != split_size(spec, split):
            raise RuntimeError(
                f"cached ShapeWorld split {path} holds {len(data)} images, the spec asks for "
                f"{split_size(spec, split)}; delete it to regenerate"
            )
        return data
    data = generate_split(spec, split, progress=progress)
    _atomic_savez(
        path,
        images=data.images,
        semantic=data.semantic,
        panoptic=data.panoptic,
        segments=data.segments,
        captions=np.asarray(data.captions),
    )
    return data


def caption_images_with_unseen(spec: WorldSpec, *, root: Path | None = None) -> tuple[int, int]:
    """(images of the caption split showing an unseen class, caption images).

    A caption names every class visible in its image, so the first number is also how many
    captions name an unseen class: what a stage-0 encoder trained on them has read.
    """
    data = load_split(spec, "caption", root=root, progress=False)
    unseen = np.zeros(256, bool)
    unseen[list(spec.class_split().unseen)] = True
    shows = unseen[data.semantic.reshape(len(data), -1)].any(1)
    return int(shows.sum()), len(data)


class ShapeWorldDataset(torch.utils.data.Dataset):
    """A ShapeWorld split as a segmentation dataset with full (seen + unseen) labels.

    Samples are dicts: ``image`` (3, S, S) uint8, ``label`` (S, S) int64 class indices,
    ``panoptic`` (S, S) int64 segment ids, ``segments`` (n, 3) int64 ``(id, class, is_thing)``,
    ``caption`` str and ``id`` str. Training code never sees this class directly: it receives
    :class:`zeroseg.data.protocol.SeenOnly`, which removes every unseen label.
    """

    def __init__(
        self,
        spec: WorldSpec | str | Path | None,
        split: str,
        *,
        root: Path | None = None,
        limit: int | None = None,
        progress: bool = True,
    ):
        self.spec = spec if isinstance(spec, WorldSpec) else load_spec(spec)
        self.split_name = split
        self.data = load_split(self.spec, split, root=root, progress=progress)
        self.indices = np.arange(len(self.data) if limit is None else min(limit, len(self.data)))
        seg = self.data.segments
        order = np.argsort(seg[:, 0], kind="stable")
        self._seg = seg[order]
        self._seg_start = np.searchsorted(self._seg[:, 0], np.arange(len(self.data) + 1))

    @property
    def class_split(self) -> ClassSplit:
        return self.spec.class_split()

    @property
    def max_image_side(self) -> int:
        """The longest image side in the split (every ShapeWorld image is S x S)."""
        return self.spec.image_size

    def __len__(self) -> int:
        return len(self.indices)

    def labels(self) -> np.ndarray:
        """(N, S, S) uint8 full label maps of the samples, without decoding images (fast scans)."""
        return self.data.semantic[self.indices]

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        segs = self._seg[self._seg_start[j] : self._seg_start[j + 1], 1:]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(self.data.images[j].transpose(2, 0, 1))),
            "label": torch.from_numpy(self.data.semantic[j].astype(np.int64)),
            "panoptic": torch.from_numpy(self.data.panoptic[j].astype(np.int64)),
            "segments": torch.from_numpy(segs.astype(np.int64)),
            "caption": self.data.captions[j],
            "id": f"{self.spec.name}/{self.split_name}/{j:06d}",
        }
