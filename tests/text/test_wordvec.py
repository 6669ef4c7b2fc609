"""Word-vector class embeddings (word2vec / fastText text format)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zeroseg.text.wordvec import UnknownWordError, WordVectorEncoder, WordVectors, split_words

VECTORS = {
    "red": [3.0, 0.0, 0.0, 0.0],
    "triangle": [0.0, 2.0, 0.0, 0.0],
    "potted": [0.0, 0.0, 1.0, 0.0],
    "plant": [0.0, 0.0, 0.0, 5.0],
    "ground": [1.0, 1.0, 0.0, 0.0],
}


def _write(path, vectors=VECTORS, header=True, extra_lines=()):
    lines = [f"{len(vectors) + len(extra_lines)} 4"] if header else []
    lines += [f"{w} " + " ".join(f"{x:g}" for x in v) for w, v in vectors.items()]
    lines += list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("header", [True, False])
def test_load_with_and_without_header(tmp_path, header):
    wv = WordVectors.load(_write(tmp_path / "w.vec", header=header))
    assert len(wv) == 5 and wv.dim == 4
    np.testing.assert_array_equal(wv.vector("plant"), [0, 0, 0, 5])


def test_single_word_is_unit_normalised_and_lookup_is_lowercase(tmp_path):
    wv = WordVectors.load(_write(tmp_path / "w.txt"))
    np.testing.assert_allclose(wv.embed("RED"), [1, 0, 0, 0])
    assert "Red" in wv


def test_multi_word_names_average_unit_word_vectors(tmp_path):
    wv = WordVectors.load(_write(tmp_path / "w.txt"))
    # unit(red) = e1, unit(triangle) = e2 -> mean (0.5, 0.5) -> unit (1/sqrt2, 1/sqrt2).
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(wv.embed("red triangle"), [s, s, 0, 0], atol=1e-6)
    # Norms 1 and 5 weigh the same once unit-normalised; every separator splits.
    for name in ("potted plant", "potted-plant", "potted_plant", "Potted/Plant"):
        np.testing.assert_allclose(wv.embed(name), [0, 0, s, s], atol=1e-6)
    assert split_words(" wall--concrete ") == ["wall", "concrete"]


def test_unknown_word_names_the_word_and_the_class(tmp_path):
    wv = WordVectors.load(_write(tmp_path / "w.txt"))
    with pytest.raises(UnknownWordError, match=r"word 'striped' of class 'striped ground'"):
        wv.embed("striped ground")
    enc = WordVectorEncoder(wv)
    with pytest.raises(UnknownWordError, match="w.txt"):
        enc.encode(["red", "blue triangle"])


def test_encoder_interface(tmp_path):
    path = _write(tmp_path / "vectors.vec")
    enc = WordVectorEncoder(path)  # a path or a loaded WordVectors
    out = enc.encode(["red", "red triangle", "ground"], templates=["a photo of a {}."])
    assert out.dtype == torch.float32 and out.shape == (3, 4)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    # Templates are ignored: word vectors embed the bare name.
    assert torch.equal(out, enc.encode(["red", "red triangle", "ground"]))
    assert enc.name.startswith("wordvec:vectors.vec:4d:") and enc.dim == 4
    assert enc.encode([]).shape == (0, 4)
    with pytest.raises(TypeError, match="single string"):
        enc.encode("red")


def test_name_changes_with_file_content(tmp_path):
    a = WordVectorEncoder(_write(tmp_path / "w.vec")).name
    changed = dict(VECTORS, red=[2.0, 0.0, 0.0, 0.0])
    b = WordVectorEncoder(_write(tmp_path / "w.vec", vectors=changed)).name
    assert a != b


def test_casing_prefers_the_lowercase_entry(tmp_path):
    path = _write(tmp_path / "w.txt", header=False, extra_lines=["Apple 1 0 0 0", "apple 0 1 0 0"])
    np.testing.assert_array_equal(WordVectors.load(path).vector("APPLE"), [0, 1, 0, 0])
    path = _write(tmp_path / "w2.txt", header=False, extra_lines=["Apple 1 0 0 0", "APPLE 0 1 0 0"])
    np.testing.assert_array_equal(WordVectors.load(path).vector("apple"), [1, 0, 0, 0])


def test_word_filter_and_tokens_with_spaces(tmp_path):
    path = _write(tmp_path / "w.txt", extra_lines=["new york 1 1 1 1"])
    wv = WordVectors.load(path, words=["red triangle", "new york"])
    assert set(wv.vocab) == {"red", "triangle"}  # class names are split into words
    assert WordVectors.load(path).vector("new york").tolist() == [1, 1, 1, 1]


def test_malformed_files_fail_with_location(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("red 1 0 0\nblue 1 0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected a word and 3 values"):
        WordVectors.load(bad)
    bad.write_text("3 2\nred 1 0\nblue 0 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header announces 3 vectors but the file has 2"):
        WordVectors.load(bad)
    bad.write_text("red 1 x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.txt:1: non-numeric value for 'red'"):
        WordVectors.load(bad)
    with pytest.raises(FileNotFoundError, match="missing.vec"):
        WordVectors.load(tmp_path / "missing.vec")
