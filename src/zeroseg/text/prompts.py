"""Prompt templates: a class name is embedded as the mean over several sentences that contain it."""

from __future__ import annotations

from collections.abc import Sequence

# For natural images, CLIP-style prompts (a subset of the ImageNet ensemble that ZegCLIP and
# ZegFormer use).
IMAGENET_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
)

# ShapeWorld images are renderings of flat shapes on textured grounds.
SHAPEWORLD_TEMPLATES = (
    "{}",
    "a picture of a {}.",
    "a drawing of a {}.",
    "a rendering of a {}.",
)

TEMPLATE_SETS = {
    "none": ("{}",),
    "imagenet": IMAGENET_TEMPLATES,
    "shapeworld": SHAPEWORLD_TEMPLATES,
}


def resolve_templates(templates: str | Sequence[str] | None) -> tuple[str, ...]:
    """A named template set or an explicit list; every template must contain exactly one ``{}``."""
    if templates is None:
        return ("{}",)
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"unknown template set {templates!r}; valid: {sorted(TEMPLATE_SETS)}")
        return TEMPLATE_SETS[templates]
    out = tuple(templates)
    if not out:
        raise ValueError("the template list is empty")
    for t in out:
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r} must contain exactly one '{{}}'")
    return out


def apply_templates(
    names: Sequence[str], templates: str | Sequence[str] | None
) -> tuple[list[str], int, int]:
    """All sentences, name-major: ``sentences[k * T + t] = templates[t].format(names[k])``."""
    ts = resolve_templates(templates)
    return [t.format(n) for n in names for t in ts], len(names), len(ts)
