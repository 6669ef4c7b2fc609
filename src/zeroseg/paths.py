"""Where zeroseg keeps generated worlds, text embeddings and other caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$ZEROSEG_CACHE`` if set, else ``~/.cache/zeroseg``."""
    env = os.environ.get("ZEROSEG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "zeroseg"
