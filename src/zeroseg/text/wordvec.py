"""Word-vector class embeddings, the semantic space of ZS3Net (Bucher et al., NeurIPS 2019), which
embeds each class name with word2vec (Mikolov et al., 2013) and averages the words of multi-word
names.

Reads the word2vec / fastText *text* format (``.txt``, ``.vec``): an optional header line
``"<count> <dim>"``, then one ``"<word> <v1> ... <vd>"`` per line. A class name is split into
words on spaces, '-', '_' and '/' ("potted plant", "wall-concrete", "tv/monitor"); each word
vector is unit-normalised before averaging so frequent words (larger norms in word2vec) do not
dominate, and the mean is unit-normalised again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["UnknownWordError", "WordVectorEncoder", "WordVectors", "split_words"]

_SPLIT = re.compile(r"[\s\-_/]+")


class UnknownWordError(LookupError):
    """A word of a class name has no vector."""


def split_words(name: str) -> list[str]:
    """Lowercased words of a class name: ``"Potted-plant"`` -> ``["potted", "plant"]``."""
    return [w for w in _SPLIT.split(name.lower()) if w]


def _is_header(parts: list[str]) -> bool:
    return len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit()


class WordVectors:
    """A table of word vectors with lowercase lookup.

    Args:
        vocab: Mapping of lowercase word -> row in ``matrix``.
        matrix: (V, d) float32 vectors.
        source: Where they came from, for error messages and encoder names.
        fingerprint: Short content hash identifying the vectors (computed if not given).
    """

    def __init__(
        self,
        vocab: dict[str, int],
        matrix: np.ndarray,
        source: str = "<memory>",
        fingerprint: str | None = None,
    ) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != len(vocab):
            raise ValueError(
                f"word vectors from {source}: matrix {matrix.shape} does not fit {len(vocab)} words"
            )
        self.vocab = vocab
        self.matrix = matrix.astype(np.float32, copy=False)
        self.source = source
        if fingerprint is None:
            digest = hashlib.sha256(json.dumps(sorted(vocab.items())).encode())
            digest.update(np.ascontiguousarray(self.matrix).tobytes())
            fingerprint = digest.hexdigest()[:12]
        self.fingerprint = fingerprint

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    def __len__(self) -> int:
        return len(self.vocab)

    def __contains__(self, word: str) -> bool:
        return word.lower() in self.vocab

    @classmethod
    def load(cls, path: str | Path, *, words: Iterable[str] | None = None) -> WordVectors:
        """Read a word2vec / fastText text file.

        Lookup is lowercase. When a file holds several casings of a word ("Apple", "apple"),
        the all-lowercase entry wins if present, otherwise the first one in the file (these
        files are sorted by frequency).

        Args:
            path: The ``.txt`` / ``.vec`` file.
            words: If given, keep only these words (case-insensitive; class names are split
                into words), to avoid holding millions of vectors in memory.

        Returns:
            The loaded table.
        """
        path = Path(path)
        if not path.is_file():
            from zeroseg.sources import missing_file

            raise missing_file("wordvec", path, key="text.encoder")
        keep = {w for item in words for w in split_words(item)} if words is not None else None
        vocab: dict[str, int] = {}
        exact_lower: set[str] = set()
        rows: list[np.ndarray] = []
        dim: int | None = None
        header_count: int | None = None
        seen_lines = 0
        digest = hashlib.sha256()
        with path.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                digest.update(line.encode("utf-8"))
                stripped = line.rstrip()
                if not stripped:
                    continue
                # Split on ' ' only: words may contain other (e.g. non-breaking) whitespace.
                parts = stripped.split(" ")
                if lineno == 1 and _is_header(parts):
                    header_count, dim = int(parts[0]), int(parts[1])
                    continue
                if dim is None:
                    dim = len(parts) - 1
                    if dim < 1:
                        raise ValueError(
                            f"{path}:{lineno}: expected 'word v1 ... vd', got {line!r}"
                        )
                if len(parts) < dim + 1:
                    raise ValueError(
                        f"{path}:{lineno}: expected a word and {dim} values, "
                        f"got {len(parts)} fields"
                    )
                seen_lines += 1
                # Some files (e.g. GloVe 840B) contain tokens with spaces: the vector is always
                # the last `dim` fields.
                word = " ".join(parts[:-dim])
                key = word.lower()
                if keep is not None and key not in keep:
                    continue
                if key in vocab and not (word == key and key not in exact_lower):
                    continue
                try:
                    vec = np.asarray(parts[-dim:], dtype=np.float32)
                except ValueError as err:
                    raise ValueError(f"{path}:{lineno}: non-numeric value for {word!r}") from err
                if key in vocab:
                    rows[vocab[key]] = vec
                else:
                    vocab[key] = len(rows)
                    rows.append(vec)
                if word == key:
                    exact_lower.add(key)
        if dim is None or seen_lines == 0:
            raise ValueError(f"no word vectors in {path}")
        if header_count is not None and header_count != seen_lines:
            raise ValueError(
                f"{path}: header announces {header_count} vectors but the file has {seen_lines}"
            )
        matrix = np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)
        return cls(vocab, matrix, source=str(path), fingerprint=digest.hexdigest()[:12])

    def vector(self, word: str, *, class_name: str | None = None) -> np.ndarray:
        """The (d,) vector of one word (case-insensitive)."""
        idx = self.vocab.get(word.lower())
        if idx is None:
            of = f" of class {class_name!r}" if class_name is not None else ""
            raise UnknownWordError(
                f"word {word!r}{of} has no vector in {self.source} ({len(self)} words, "
                f"{self.dim}-d); rename the class or add the word to the file"
            )
        return self.matrix[idx]

    def embed(self, name: str) -> np.ndarray:
        """Unit (d,) float32 embedding of a class name: mean of its unit word vectors,
        renormalised."""
        words = split_words(name)
        if not words:
            raise ValueError(f"class name {name!r} contains no words")
        unit = []
        for w in words:
            v = self.vector(w, class_name=name).astype(np.float64)
            norm = np.linalg.norm(v)
            if norm == 0:
                raise ValueError(f"word {w!r} of class {name!r} has a zero vector in {self.source}")
            unit.append(v / norm)
        mean = np.mean(unit, axis=0)
        norm = np.linalg.norm(mean)
        if norm < 1e-8:
            raise ValueError(f"the word vectors of class {name!r} cancel out (mean norm {norm:g})")
        return (mean / norm).astype(np.float32)


class WordVectorEncoder:
    """Class-name encoder over word vectors, with the ``TextEncoder`` interface
    ``encode(names, templates) -> (K, d)``.

    Args:
        vectors: Loaded word vectors, or the path of a word2vec / fastText text file.
        words: When loading from a path, keep only these words (see :meth:`WordVectors.load`).
    """

    def __init__(
        self, vectors: WordVectors | str | Path, *, words: Iterable[str] | None = None
    ) -> None:
        if not isinstance(vectors, WordVectors):
            vectors = WordVectors.load(vectors, words=words)
        self.vectors = vectors

    @property
    def name(self) -> str:
        """Identifies the encoder in embedding-cache keys: file name, dimension and a hash of
        the file's content (so replacing the file invalidates cached embeddings)."""
        v = self.vectors
        return f"wordvec:{Path(v.source).name}:{v.dim}d:{v.fingerprint}"

    @property
    def dim(self) -> int:
        return self.vectors.dim

    def encode(self, names: Sequence[str], templates: Sequence[str] | None = None) -> Tensor:
        """Embed class names.

        Args:
            names: K class names.
            templates: Ignored: prompt templates ("a photo of a {}.") only mean something to
                sentence encoders; word vectors embed the bare name, as ZS3 does. Accepted so
                every encoder has the same signature.

        Returns:
            (K, d) float32 unit vectors.
        """
        del templates
        if isinstance(names, str):
            raise TypeError("encode expects a sequence of class names, got a single string")
        if len(names) == 0:
            return torch.zeros(0, self.dim, dtype=torch.float32)
        return torch.from_numpy(np.stack([self.vectors.embed(n) for n in names]))
