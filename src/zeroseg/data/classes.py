"""Class splits: which classes are seen (labelled in training) and which are unseen.

A :class:`ClassSplit` is data, built once and validated: names are unique and non-empty, the seen and
unseen index sets are disjoint and together cover every class. It carries the lookup table that turns
a full label map into a seen-only training label map (unseen pixels become ``ignore_index``), the one
place where the generalized zero-shot protocol is enforced for pixel labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

PROTOCOLS = ("ignore", "strict")


class ClassSplitError(ValueError):
    """A class list or split that does not validate."""


def validate_class_names(names: Sequence[str], *, what: str = "class list") -> tuple[str, ...]:
    """Checks a vocabulary: non-empty, every name a non-blank string, no duplicates.

    Args:
        names: class names in label order.
        what: how to name the list in an error message.

    Returns:
        The names as a tuple, stripped of surrounding white space.
    """
    if isinstance(names, str):
        raise ClassSplitError(f"{what}: expected a list of names, got the string {names!r}")
    cleaned = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ClassSplitError(f"{what}: entry {i} is {name!r}, expected a non-empty name")
        cleaned.append(name.strip())
    if not cleaned:
        raise ClassSplitError(f"{what} is empty: at least one class name is needed")
    seen: dict[str, int] = {}
    for i, name in enumerate(cleaned):
        key = name.lower()
        if key in seen:
            raise ClassSplitError(
                f"{what}: duplicated class name {name!r} (entries {seen[key]} and {i})"
            )
        seen[key] = i
    return tuple(cleaned)


@dataclass(frozen=True)
class ClassSplit:
    """A vocabulary split into seen and unseen classes.

    Attributes:
        names: all class names, in label order (label ``i`` is ``names[i]``).
        unseen: indices of the unseen classes (never labelled in training).
        ignore_index: the label value that losses and metrics ignore.
        things: indices of the countable classes (instances); the rest are stuff. Empty means
            "not known" (semantic-only datasets).
    """

    names: tuple[str, ...]
    unseen: tuple[int, ...]
    ignore_index: int = 255
    things: tuple[int, ...] = ()
    seen: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = validate_class_names(self.names)
        object.__setattr__(self, "names", names)
        k = len(names)
        unseen = tuple(sorted(int(i) for i in self.unseen))
        for i in unseen:
            if not 0 <= i < k:
                raise ClassSplitError(f"unseen index {i} is outside the {k} classes")
        if len(set(unseen)) != len(unseen):
            raise ClassSplitError(f"unseen indices repeat: {list(self.unseen)}")
        if len(unseen) == k:
            raise ClassSplitError("every class is unseen: at least one seen class is needed")
        if 0 <= self.ignore_index < k:
            raise ClassSplitError(
                f"ignore_index {self.ignore_index} collides with class {self.ignore_index} "
                f"({names[self.ignore_index]!r})"
            )
        things = tuple(sorted(int(i) for i in self.things))
        for i in things:
            if not 0 <= i < k:
                raise ClassSplitError(f"thing index {i} is outside the {k} classes")
        object.__setattr__(self, "unseen", unseen)
        object.__setattr__(self, "things", things)
        object.__setattr__(self, "seen", tuple(i for i in range(k) if i not in set(unseen)))

    @classmethod
    def from_names(
        cls,
        names: Sequence[str],
        unseen_names: Sequence[str],
        *,
        ignore_index: int = 255,
        thing_names: Sequence[str] = (),
    ) -> ClassSplit:
        """Builds a split from names; an unseen or thing name that is not a class is an error."""
        names = validate_class_names(names)
        lookup = {n.lower(): i for i, n in enumerate(names)}

        def index(name: str, role: str) -> int:
            try:
                return lookup[name.strip().lower()]
            except KeyError:
                raise ClassSplitError(
                    f"{role} class {name!r} is not one of the {len(names)} classes"
                ) from None

        return cls(
            names=names,
            unseen=tuple(index(n, "unseen") for n in unseen_names),
            ignore_index=ignore_index,
            things=tuple(index(n, "thing") for n in thing_names),
        )

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def seen_names(self) -> tuple[str, ...]:
        return tuple(self.names[i] for i in self.seen)

    @property
    def unseen_names(self) -> tuple[str, ...]:
        return tuple(self.names[i] for i in self.unseen)

    @property
    def stuff(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_classes) if i not in set(self.things))

    def seen_mask(self) -> torch.Tensor:
        """(K,) bool, True at the seen classes."""
        return self._flags(self.seen)

    def thing_mask(self) -> torch.Tensor:
        """(K,) bool, True at the thing classes."""
        return self._flags(self.things)

    def _flags(self, indices: tuple[int, ...]) -> torch.Tensor:
        flags = torch.zeros(self.num_classes, dtype=torch.bool)
        flags[list(indices)] = True
        return flags

    def is_unseen(self, index: int) -> bool:
        return index in set(self.unseen)

    def seen_lookup(self) -> np.ndarray:
        """A 256-entry table mapping full labels to training labels in the *full* index space.

        Seen classes keep their index, unseen classes and out-of-range values become
        ``ignore_index``. Training stages index their classifiers over all classes and simply
        never receive an unseen target.
        """
        table = np.full(256, self.ignore_index, dtype=np.uint8)
        for i in self.seen:
            table[i] = i
        return table

    def to_seen_labels(self, label: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Removes every unseen label from a label map (unseen → ``ignore_index``).

        Args:
            label: (..., H, W) integer labels in the full index space, values in [0, 255].
        """
        table = self.seen_lookup()
        if isinstance(label, torch.Tensor):
            lut = torch.as_tensor(table.astype(np.int64), device=label.device)
            return lut[label.long().clamp(0, 255)].to(label.dtype)
        return table[np.asarray(label).astype(np.int64).clip(0, 255)].astype(label.dtype)

    def contains_unseen(self, label: np.ndarray | torch.Tensor) -> bool:
        """Whether a full label map has any pixel of an unseen class."""
        if not self.unseen:
            return False
        if isinstance(label, torch.Tensor):
            return bool(torch.isin(label, torch.tensor(self.unseen, device=label.device)).any())
        return bool(np.isin(np.asarray(label), self.unseen).any())

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "unseen": list(self.unseen),
            "ignore_index": self.ignore_index,
            "things": list(self.things),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ClassSplit:
        return cls(
            names=tuple(d["names"]),
            unseen=tuple(d["unseen"]),
            ignore_index=int(d.get("ignore_index", 255)),
            things=tuple(d.get("things", ())),
        )
