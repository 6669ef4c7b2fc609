"""CLIP tokenizer: known ids, parity with transformers.CLIPTokenizer, truncation, file loading."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from zeroseg.text.clip_tokenizer import CLIPTokenizer, bytes_to_unicode, default_bpe_path

PROMPTS = [
    "a photo of a cat.",
    "A PHOTO of the Striped green ground!!",
    "it's a dog's life, isn't it? they'll see; we'd go",
    "naïve café — 123 x2",
    "  multiple   spaces\tand\nnewlines ",
    "a red triangle on a dotted blue background",
    "tvmonitor, pottedplant & sofa",
    "Ünïcödé ÅÆØ 東京 🙂",
    "",
]


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer()


def _unpadded(row: torch.Tensor, eot: int) -> list[int]:
    ids = row.tolist()
    return ids[: ids.index(eot) + 1]


def test_known_ids(tokenizer: CLIPTokenizer) -> None:
    # OpenAI CLIP's ids: a</w>=320, photo</w>=1125, of</w>=539, cat</w>=2368, .</w>=269.
    ids = tokenizer(["a photo of a cat."])
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    assert ids[0, 8:].eq(0).all()
    assert tokenizer.vocab_size == 49408
    assert (tokenizer.sot_token_id, tokenizer.eot_token_id) == (49406, 49407)


def test_cleaning_lowercases_and_collapses_whitespace(tokenizer: CLIPTokenizer) -> None:
    assert tokenizer.encode("  A   Photo\tOF\na CAT. ") == tokenizer.encode("a photo of a cat.")
    assert tokenizer.encode("cats &amp;amp; dogs") == tokenizer.encode("cats & dogs")


def test_byte_table_is_a_bijection_with_printables_first() -> None:
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert list(table)[:3] == [ord("!"), ord('"'), ord("#")]
    assert table[ord(" ")] == chr(256 + 32)  # bytes 0..31 come first among the remapped


def _write_hf_files(tokenizer: CLIPTokenizer, directory: Path) -> None:
    directory.mkdir()
    (directory / "vocab.json").write_text(json.dumps(tokenizer.encoder), encoding="utf-8")
    merges = sorted(tokenizer.ranks, key=tokenizer.ranks.__getitem__)
    text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (directory / "merges.txt").write_text(text, encoding="utf-8")


def test_parity_with_transformers(tokenizer: CLIPTokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    directory = tmp_path / "hf"
    _write_hf_files(tokenizer, directory)
    reference = transformers.CLIPTokenizer.from_pretrained(str(directory))
    ours = tokenizer(PROMPTS)
    for text, row in zip(PROMPTS, ours):
        assert _unpadded(row, 49407) == reference(text)["input_ids"], text


def test_hf_directory_gives_the_same_ids(tokenizer: CLIPTokenizer, tmp_path: Path) -> None:
    directory = tmp_path / "hf"
    _write_hf_files(tokenizer, directory)
    from_dir = CLIPTokenizer(directory)
    assert torch.equal(from_dir(PROMPTS), tokenizer(PROMPTS))


def test_explicit_gzip_path(tokenizer: CLIPTokenizer) -> None:
    path = default_bpe_path()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz"
    assert torch.equal(CLIPTokenizer(path)(PROMPTS[:3]), tokenizer(PROMPTS[:3]))


def test_truncation_keeps_eot(tokenizer: CLIPTokenizer) -> None:
    long = " ".join(["cat"] * 100)  # 100 words, each one id (2368)
    ids = tokenizer([long, "cat"])
    assert ids.shape == (2, 77)
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407
    assert ids[0, 1:-1].eq(2368).all()  # 75 words survive
    short = tokenizer([long], context_length=5)
    assert short.tolist() == [[49406, 2368, 2368, 2368, 49407]]


def test_decode_round_trip(tokenizer: CLIPTokenizer) -> None:
    ids = tokenizer(["a red triangle, striped green ground!"])[0]
    assert tokenizer.decode(ids) == "a red triangle , striped green ground !"


def test_missing_vocabulary_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLIPTokenizer(tmp_path / "nope.txt.gz")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match=r"vocab\.json.*merges\.txt"):
        CLIPTokenizer(tmp_path / "d")


def test_truncated_merge_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "short.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\nt h\n")
    with pytest.raises(ValueError, match="merge lines"):
        CLIPTokenizer(path)
