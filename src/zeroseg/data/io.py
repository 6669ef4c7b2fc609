"""Reading images and label maps safely: clear errors for every way a file can be bad.

Images are decoded to (H, W, 3) uint8 RGB: grayscale and palette images are converted, RGBA is
rejected unless ``alpha="drop"``, 16-bit images are rejected (their scaling is ambiguous). Label
maps must be single-channel 8-bit (``L`` or ``P``, whose indices are the labels). A pixel limit
guards against decompression bombs. Every error names the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = (
    80_000_000  # about 9000 x 9000; larger files are refused as possible decompression bombs
)


class ImageError(ValueError):
    """An image or label file that cannot be used; the message names the file."""


def _open(path: Path, max_pixels: int) -> Image.Image:
    if not path.is_file():
        raise ImageError(f"{path}: file does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                img = Image.open(path)
                if img.width * img.height > max_pixels:
                    raise ImageError(
                        f"{path}: {img.width}x{img.height} exceeds the {max_pixels}-pixel limit"
                    )
                img.load()
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: corrupt or truncated image ({e})") from None
    return img


def read_image(
    path: str | Path, *, alpha: str = "error", max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decodes an image file to (H, W, 3) uint8 RGB.

    Args:
        alpha: "error" rejects images with an alpha channel; "drop" discards it.
    """
    path = Path(path)
    img = _open(path, max_pixels)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise ImageError(
            f"{path}: {mode} ({'16-bit' if '16' in mode else '32-bit'}) images are not supported; convert to 8-bit RGB"
        )
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        if alpha != "drop":
            raise ImageError(
                f"{path}: has an alpha channel ({mode}); pass alpha='drop' (zeroseg predict "
                "--alpha drop) to ignore it"
            )
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_label(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decodes a label PNG to (H, W) uint8 class indices (``L`` or palette ``P`` images only)."""
    path = Path(path)
    img = _open(path, max_pixels)
    if img.mode not in ("L", "P"):
        raise ImageError(
            f"{path}: label maps must be single-channel 8-bit (mode L or P), got mode {img.mode}"
        )
    return np.asarray(img, dtype=np.uint8)


def check_label_range(
    label: np.ndarray, num_classes: int, ignore_index: int, *, where: str
) -> None:
    """Raises if a label map holds a value that is neither a class nor ``ignore_index``."""
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if len(bad):
        raise ImageError(
            f"{where}: label values {bad.tolist()[:10]} are outside the {num_classes} classes "
            f"(valid: 0-{num_classes - 1} and ignore {ignore_index})"
        )


def check_same_size(image: np.ndarray, label: np.ndarray, *, where: str) -> None:
    if image.shape[:2] != label.shape[:2]:
        raise ImageError(
            f"{where}: image is {image.shape[1]}x{image.shape[0]} but its label is "
            f"{label.shape[1]}x{label.shape[0]}"
        )
