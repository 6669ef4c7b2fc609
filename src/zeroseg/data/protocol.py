"""The generalized zero-shot training protocols, enforced on the data every training stage receives.

``ignore``: every unseen pixel label becomes ``ignore_index`` (ZS3Net, ZegCLIP, SPNet).
``strict``: training images containing any unseen pixel are dropped altogether (PADing, following
ZegFormer's COCO setting), so not even the *shape* of an unseen region is visible as ignore pixels.

:class:`SeenOnly` is the only view of a labelled dataset that training code receives, and
:func:`assert_seen_only` is the guard the engine runs on every training batch: an unseen label that
reached a batch is a bug, and it stops training with an error rather than a silent leak.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from zeroseg.data.classes import PROTOCOLS, ClassSplit


class ProtocolError(RuntimeError):
    """An unseen-class label reached a training stage."""


class SeenOnly(torch.utils.data.Dataset):
    """A labelled dataset seen through a zero-shot protocol.

    Labels of unseen classes become ``ignore_index``; panoptic segments of unseen classes are
    removed (their pixels get segment id 0, "void"); captions (which name unseen classes) are
    removed. Under ``strict`` images with any unseen pixel are dropped.

    Args:
        dataset: a dataset of dicts with at least ``image`` and ``label`` (full labels).
        split: the class split.
        protocol: "ignore" or "strict".
    """

    def __init__(self, dataset, split: ClassSplit, protocol: str = "ignore"):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; valid: {list(PROTOCOLS)}")
        self.dataset, self.split, self.protocol = dataset, split, protocol
        self.unseen_free = np.arange(len(dataset))
        if protocol == "strict":
            keep = ~_images_with_unseen(dataset, split)
            self.unseen_free = np.flatnonzero(keep)
        self.dropped = len(dataset) - len(self.unseen_free)
        self._lookup = torch.as_tensor(split.seen_lookup().astype(np.int64))

    def __len__(self) -> int:
        return len(self.unseen_free)

    def __getitem__(self, i: int) -> dict:
        sample = dict(self.dataset[int(self.unseen_free[i])])
        label = sample["label"]
        sample["label"] = self._lookup[label.long().clamp(0, 255)]
        sample.pop("caption", None)
        if "segments" in sample:
            segs = sample["segments"]
            drop = torch.isin(segs[:, 1], torch.tensor(self.split.unseen, dtype=segs.dtype))
            # crowd regions (COCO's is_crowd column) are no training target: void, as detectron2
            if segs.shape[1] > 3:
                drop |= segs[:, 3] != 0
            if drop.any():
                pan = sample["panoptic"].clone()
                pan[torch.isin(pan, segs[drop, 0])] = 0
                sample["panoptic"] = pan
                sample["segments"] = segs[~drop]
        return sample


def _images_with_unseen(dataset, split: ClassSplit) -> np.ndarray:
    """(N,) bool: which images of a dataset contain an unseen pixel."""
    if hasattr(dataset, "labels"):  # fast path: label maps without decoding images
        labels = dataset.labels()
        return np.isin(labels, split.unseen).reshape(len(labels), -1).any(axis=1)
    if hasattr(dataset, "read_annotation"):  # real datasets: read annotation files only
        out = []
        for i in range(len(dataset)):
            ann = dataset.read_annotation(i)
            # segments count too: a crowd region of an unseen class is ignore in the label
            segs = ann.get("segments")
            classes = segs[:, 1] if segs is not None and len(segs) else np.zeros(0, np.int64)
            out.append(
                split.contains_unseen(ann["label"]) or bool(np.isin(classes, split.unseen).any())
            )
        return np.array(out, dtype=bool)
    if hasattr(dataset, "label"):
        return np.array(
            [split.contains_unseen(np.asarray(dataset.label(i))) for i in range(len(dataset))]
        )
    return np.array([split.contains_unseen(dataset[i]["label"]) for i in range(len(dataset))])


def assert_seen_only(batch: Mapping, split: ClassSplit, *, stage: str) -> None:
    """Raises :class:`ProtocolError` if a training batch carries any unseen label."""
    label = batch.get("label")
    if label is not None and split.contains_unseen(label):
        found = sorted(set(torch.unique(label).tolist()) & set(split.unseen))
        names = [split.names[i] for i in found]
        raise ProtocolError(
            f"stage {stage!r} received labels of unseen classes {names}: "
            "training data must come through zeroseg.data.protocol.SeenOnly"
        )
    segs = batch.get("segments")
    if segs is not None:
        for s in segs if isinstance(segs, (list, tuple)) else [segs]:
            s = s.reshape(-1, s.shape[-1])  # (n, 3) per image, or (B, n, 3) when collated
            if len(s) and torch.isin(s[:, 1], torch.tensor(split.unseen, dtype=s.dtype)).any():
                raise ProtocolError(f"stage {stage!r} received a segment of an unseen class")
