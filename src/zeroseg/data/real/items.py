"""One sample's file problems (missing, unreadable, out of range, size mismatch).

Used by :func:`zeroseg.data.real.skip_bad_samples` while a dataset is built and by
:func:`zeroseg.data.check.check_dataset`; kept here, below both, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from zeroseg.data.io import ImageError, read_image
from zeroseg.data.real.base import LabelRangeError

KINDS = (
    "missing layout",
    "missing image",
    "missing label",
    "unreadable image",
    "unreadable label",
    "label out of range",
    "size mismatch",
)


@dataclass
class Problem:
    """One thing wrong with a dataset.

    Attributes:
        kind: one of :data:`KINDS`.
        split: "train" or "val".
        path: the file or directory concerned.
        detail: what is wrong, as the loader would say it.
    """

    kind: str
    split: str
    path: str
    detail: str


def _missing(what: str, split: str, path) -> Problem:
    """The problem of an ``image`` or ``label`` file that does not exist."""
    return Problem(f"missing {what}", split, str(path), f"{path}: {what} file does not exist")


def check_item(ds, i: int, item, split: str) -> list[Problem]:
    found, image, label = [], None, None
    if not item.image.is_file():
        found.append(_missing("image", split, item.image))
    else:
        try:
            image = read_image(item.image, alpha="drop")
        except ImageError as e:
            found.append(Problem("unreadable image", split, str(item.image), str(e)))
    if not item.label.is_file():
        found.append(_missing("label", split, item.label))
    else:
        try:
            label = ds.read_annotation(i)["label"]
        except LabelRangeError as e:
            found.append(Problem("label out of range", split, str(item.label), str(e)))
        except ImageError as e:
            found.append(Problem("unreadable label", split, str(item.label), str(e)))
    if image is not None and label is not None and image.shape[:2] != label.shape:
        found.append(
            Problem(
                "size mismatch",
                split,
                str(item.label),
                f"{item.image} is {image.shape[1]}x{image.shape[0]} but {item.label} is "
                f"{label.shape[1]}x{label.shape[0]}",
            )
        )
    return found
