"""Deterministic, resumable batching.

The batch of training step ``t`` is a pure function of ``(seed, t)``: the sample order of epoch
``e`` is a permutation drawn from ``(seed, e)``. So resuming at step ``t`` needs no saved iterator
state, and ``R`` distributed ranks each take a contiguous slice of the same global batch, which
makes an ``R``-process run see exactly the batches of a 1-process run with the same global size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch


def collate(samples: Sequence[dict]) -> dict:
    """Stacks tensors of equal shape; keeps lists for ragged tensors and non-tensor fields."""
    out: dict = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out


class StepSampler:
    """Indices of the global batch of any training step.

    Args:
        size: dataset length.
        batch_size: global batch size (over all ranks).
        seed: decides every epoch's permutation.
        drop_last: whether an epoch's incomplete last batch is skipped (as usual for training).
    """

    def __init__(self, size: int, batch_size: int, seed: int, *, drop_last: bool = True):
        if size <= 0:
            raise ValueError("cannot sample batches from an empty dataset")
        if drop_last and batch_size > size:
            raise ValueError(f"batch size {batch_size} exceeds the dataset's {size} samples")
        self.size, self.batch_size, self.seed, self.drop_last = size, batch_size, seed, drop_last
        self.per_epoch = size // batch_size if drop_last else -(-size // batch_size)
        self._perm_epoch, self._perm = -1, np.arange(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int) -> np.ndarray:
        epoch, k = divmod(step, self.per_epoch)
        perm = self._permutation(epoch)
        return perm[k * self.batch_size : (k + 1) * self.batch_size]


class StepLoader:
    """Yields ``(step, batch)`` from ``start`` to ``stop`` for this rank.

    Args:
        dataset: map-style dataset of sample dicts.
        sampler: the global batch sampler.
        transform: optional ``f(sample, rng) -> sample`` augmentation; ``rng`` is seeded from
            ``(seed, step, index)`` so augmentations are reproducible and resumable.
        rank / world_size: this process's slice of each global batch (default: from the
            initialised process group, or 0 / 1).
    """

    def __init__(
        self,
        dataset,
        sampler: StepSampler,
        *,
        transform: Callable[[dict, np.random.Generator], dict] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        from zeroseg.engine import distributed as dist

        # Default to this process's place in the process group, so every method's loader is
        # distributed-aware without asking.
        rank = dist.rank() if rank is None else rank
        world_size = dist.world_size() if world_size is None else world_size
        if sampler.batch_size % world_size:
            raise ValueError(
                f"global batch size {sampler.batch_size} is not divisible by {world_size} ranks"
            )
        self.dataset, self.sampler, self.transform = dataset, sampler, transform
        self.rank, self.world_size = rank, world_size

    def batch(self, step: int) -> dict:
        idx = self.sampler.indices(step)
        per_rank = len(idx) // self.world_size
        idx = idx[self.rank * per_rank : (self.rank + 1) * per_rank]
        samples = []
        for i in idx:
            s = self.dataset[int(i)]
            if self.transform is not None:
                s = self.transform(s, np.random.default_rng([self.sampler.seed, step, int(i)]))
            s["index"] = int(i)
            samples.append(s)
        return collate(samples)

    def __call__(self, start: int, stop: int) -> Iterator[tuple[int, dict]]:
        for step in range(start, stop):
            yield step, self.batch(step)


def iterate_eval(dataset, batch_size: int, *, rank: int = 0, world_size: int = 1) -> Iterator[dict]:
    """Evaluation batches in dataset order; rank ``r`` takes every ``world_size``-th sample."""
    idx = list(range(rank, len(dataset), world_size))
    for k in range(0, len(idx), batch_size):
        yield collate([dataset[i] | {"index": i} for i in idx[k : k + batch_size]])


_PIXEL_KEYS = ("image", "label", "panoptic")


def size_groups(batch: dict) -> Iterator[dict]:
    """Sub-batches of one image size from an evaluation batch of :func:`collate`.

    Images of equal size come stacked: the batch itself is the one group. Images of different
    sizes (real datasets) come as lists: each sample becomes its own group, its pixel maps with a
    batch dimension of 1 and every other per-sample field (ids, segment tables) a one-item list.
    """
    if not isinstance(batch["image"], list):
        yield batch
        return
    for i in range(len(batch["image"])):
        group = {}
        for key, value in batch.items():
            if isinstance(value, list):
                group[key] = value[i][None] if key in _PIXEL_KEYS else [value[i]]
            elif isinstance(value, torch.Tensor):
                group[key] = value[i : i + 1]
            else:
                group[key] = value
        yield group


def hflip(sample: dict, rng: np.random.Generator) -> dict:
    """Random horizontal flip of image, label and panoptic map."""
    if rng.random() < 0.5:
        sample = dict(sample)
        for key in ("image", "label", "panoptic"):
            if key in sample:
                sample[key] = sample[key].flip(-1)
    return sample
