"""The CLIP text tower as a class-name encoder (``text.encoder: clip:/path/to/checkpoint``).

Loads an OpenAI checkpoint or a Hugging Face CLIP directory with :func:`zeroseg.models.pretrained.load_clip`
(strict, nothing unpickled) and embeds prompts with CLIP's own BPE tokenizer; prompt-template
averaging is the base class's (open_clip's ``build_zero_shot_classifier`` recipe).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from zeroseg.text.base import TextEncoder


class CLIPTextEncoder(TextEncoder):
    """Class embeddings from a CLIP checkpoint's text transformer (projected, unit-normalised)."""

    def __init__(self, path: str | Path, *, device: str = "cpu", batch_size: int = 256):
        from zeroseg.models.pretrained import load_clip
        from zeroseg.text.clip_tokenizer import CLIPTokenizer

        path = Path(path)
        if not path.exists():
            from zeroseg.sources import missing_file

            raise missing_file("clip", path, key="text.encoder")
        self.model = load_clip(path, device=device)
        vocab = path if path.is_dir() and (path / "vocab.json").is_file() else None
        self.tokenizer = CLIPTokenizer(vocab)
        self.device, self.batch_size = device, batch_size
        self.dim = (
            int(self.model.text.config.output_dim) if hasattr(self.model.text, "config") else 0
        )
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
        self.name = f"clip-{path.stem}-{digest}"

    @torch.no_grad()
    def _embed(self, sentences: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(sentences), self.batch_size):
            ids = self.tokenizer(sentences[i : i + self.batch_size]).to(self.device)
            out.append(self.model.encode_text(ids).float().cpu())
        return torch.cat(out)
