"""CLIP's byte-level BPE tokenizer (Radford et al., ICML 2021; BPE: Sennrich et al., ACL 2016).

Text is cleaned (ftfy, HTML unescaping, whitespace collapsed), lower-cased and split by CLIP's
pattern (contractions, letter runs, single digits, punctuation runs). Each piece's UTF-8 bytes are
mapped to printable characters, the last one marked with ``</w>``, and merged greedily by merge
rank. Sequences are wrapped in start-of-text (49406) and end-of-text (49407), truncated to the
context length with end-of-text kept, and zero-padded.

The vocabulary is read from a file, never downloaded: OpenAI's ``bpe_simple_vocab_16e6.txt.gz``
(found inside the installed ``open_clip`` package without importing it, or given by path), or a
Hugging Face tokenizer directory holding ``vocab.json`` and ``merges.txt``.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
import torch

__all__ = ["CLIPTokenizer", "bytes_to_unicode", "default_bpe_path"]

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# OpenAI's vocabulary uses the first 49152 - 256 - 2 merges of the file: 256 byte tokens, their
# 256 end-of-word forms, these merges and the two specials make the 49408 ids.
N_MERGES = 49152 - 256 - 2

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Maps each byte to a printable character, so BPE never sees whitespace or control bytes.

    Printable Latin-1 bytes map to themselves; the other 68 bytes to chr(256 + n) in byte order.
    The dict's order (printable bytes first) is the order of the 256 base ids.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def default_bpe_path() -> Path:
    """The BPE vocabulary shipped inside the installed ``open_clip`` package.

    ``importlib.util.find_spec`` of a top-level name locates the package without importing it.

    Raises:
        FileNotFoundError: open_clip is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        candidate = Path(loc) / BPE_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"CLIP's BPE vocabulary {BPE_FILE} was not found: it ships in the PyPI package "
        "open_clip_torch (install it with `pip install --no-deps open_clip_torch`; it is used "
        "as a data file only), or pass CLIPTokenizer(vocab=<path to the .txt.gz, or a Hugging "
        f"Face directory with vocab.json and merges.txt>). Searched: {locations or 'nothing'}"
    )


def _clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


def _read_openai_bpe(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(
            f"{path}: expected {N_MERGES} merge lines of two symbols each after the header"
        )
    base = list(bytes_to_unicode().values())
    tokens = (
        base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
    )
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


def _read_hf_bpe(directory: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    merges = []
    for i, line in enumerate((directory / "merges.txt").read_text(encoding="utf-8").split("\n")):
        if not line or (i == 0 and line.startswith("#version")):
            continue
        pair = tuple(line.split())
        if len(pair) != 2:
            raise ValueError(
                f"{directory / 'merges.txt'} line {i + 1}: expected two symbols, got {line!r}"
            )
        merges.append(pair)
    return vocab, merges  # type: ignore[return-value]


class CLIPTokenizer:
    """CLIP's tokenizer.

    Args:
        vocab: ``None`` for the ``bpe_simple_vocab_16e6.txt.gz`` inside the installed open_clip
            package; a path to that gzip file; or a directory with ``vocab.json`` and
            ``merges.txt`` (Hugging Face layout).
        context_length: default number of ids per text (CLIP: 77).
    """

    def __init__(self, vocab: str | Path | None = None, *, context_length: int = 77) -> None:
        path = default_bpe_path() if vocab is None else Path(vocab)
        if path.is_dir():
            missing = [n for n in ("vocab.json", "merges.txt") if not (path / n).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{path}: a Hugging Face tokenizer directory needs vocab.json and merges.txt; "
                    f"missing {missing}"
                )
            self.encoder, merges = _read_hf_bpe(path)
        elif path.is_file():
            self.encoder, merges = _read_openai_bpe(path)
        else:
            raise FileNotFoundError(f"CLIP vocabulary {path} does not exist")
        for special in (SOT_TOKEN, EOT_TOKEN):
            if special not in self.encoder:
                raise ValueError(f"{path}: vocabulary has no {special} token")
        self.source = path
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.ranks = {m: r for r, m in enumerate(merges)}
        self.sot_token_id = self.encoder[SOT_TOKEN]
        self.eot_token_id = self.encoder[EOT_TOKEN]
        self.context_length = context_length
        self._byte_encoder = bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        self._cache: dict[str, list[str]] = {SOT_TOKEN: [SOT_TOKEN], EOT_TOKEN: [EOT_TOKEN]}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, piece: str) -> list[str]:
        """Merges the symbols of one pre-token, lowest merge rank first."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            ranked = [(self.ranks.get(pair, -1), pair) for pair in zip(word, word[1:])]
            known = [(r, p) for r, p in ranked if r >= 0]
            if not known:
                break
            first, second = min(known)[1]
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens."""
        ids = []
        for piece in _PATTERN.findall(_clean(text)):
            mapped = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(mapped))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, up to the first end-of-text (so padding is ignored)."""
        ids = [int(i) for i in ids]
        if self.eot_token_id in ids:
            ids = ids[: ids.index(self.eot_token_id)]
        chars = "".join(self.decoder[i] for i in ids if i != self.sot_token_id)
        raw = bytearray(self._byte_decoder[c] for c in chars)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.Tensor:
        """Tokenizes texts into a padded id matrix.

        Args:
            texts: N strings (a single string counts as one).
            context_length: ids per row; defaults to the tokenizer's (77).

        Returns:
            (N, context_length) int64: SOT, the text's ids, EOT, then zeros. A text too long
            is cut so that its last kept id is EOT.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        if length < 2:
            raise ValueError(f"context_length must be >= 2 to hold start and end, got {length}")
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text)][: length - 1] + [self.eot_token_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
