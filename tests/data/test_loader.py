"""Evaluation batching helpers of zeroseg.data.loader."""

from __future__ import annotations

import torch

from zeroseg.data.loader import collate, size_groups


def test_size_groups_split_images_of_different_sizes():
    # real datasets: images of different sizes arrive as lists and are predicted one at a time
    def sample(h, w, n, name):
        return {
            "image": torch.zeros(3, h, w, dtype=torch.uint8),
            "panoptic": torch.zeros(h, w, dtype=torch.int64),
            "segments": torch.zeros(n, 3, dtype=torch.int64),
            "id": name,
        }

    ragged = collate([sample(6, 8, 2, "a"), sample(10, 4, 3, "b")])
    groups = list(size_groups(ragged))
    assert [g["image"].shape for g in groups] == [(1, 3, 6, 8), (1, 3, 10, 4)]
    assert [len(g["segments"][0]) for g in groups] == [2, 3]
    assert [g["id"] for g in groups] == [["a"], ["b"]]  # per-sample fields follow their image
    same = collate([sample(6, 8, 2, "a"), sample(6, 8, 3, "b")])  # one size: one group
    (group, *rest) = list(size_groups(same))
    assert not rest and group["image"].shape == (2, 3, 6, 8)
    assert [len(s) for s in group["segments"]] == [2, 3]
