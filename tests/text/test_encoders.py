import pytest
import torch

from zeroseg.data.shapeworld import load_spec
from zeroseg.text.cache import cached_encode
from zeroseg.text.encoders import AttributeEncoder, MiniLMEncoder, build_text_encoder
from zeroseg.text.prompts import apply_templates, resolve_templates


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder()


def test_minilm_gives_unit_vectors_that_know_words(minilm):
    emb = minilm.encode(
        ["red circle", "red ring", "blue square", "striped gray ground"], "shapeworld"
    )
    assert emb.shape == (4, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2]  # "red circle" is nearer "red ring" than "blue square"


def test_cache_avoids_building_the_encoder(tmp_path, minilm):
    first = cached_encode(minilm, ["a cat", "a dog"], "none", root=tmp_path)

    def must_not_build():
        raise AssertionError("the cache should have answered")

    again = cached_encode(must_not_build, ["a cat", "a dog"], "none", root=tmp_path, name="minilm")
    assert torch.equal(first, again)
    other = cached_encode(minilm, ["a cat", "a dog"], "shapeworld", root=tmp_path)
    assert not torch.equal(first, other)  # templates are part of the key


def test_duplicate_or_empty_names_are_rejected(minilm):
    with pytest.raises(ValueError, match="duplicated class name"):
        minilm.encode(["cat", "cat"])
    with pytest.raises(ValueError, match="empty"):
        minilm.encode([])


def test_attribute_vectors_share_colour_and_shape():
    spec = load_spec()
    enc = AttributeEncoder(spec)
    e = enc.encode(["red circle", "red square", "green circle", "noisy brown ground"])
    sim = e @ e.T
    assert sim[0, 1] == pytest.approx(0.5) and sim[0, 2] == pytest.approx(0.5)
    assert sim[1, 2] == pytest.approx(0.0)
    with pytest.raises(KeyError, match="purple cow"):
        enc.encode(["purple cow"])


def test_templates():
    sentences, k, t = apply_templates(["cat"], ["a {}.", "the {}"])
    assert sentences == ["a cat.", "the cat"] and (k, t) == (1, 2)
    with pytest.raises(ValueError, match="exactly one"):
        resolve_templates(["no slot"])
    with pytest.raises(ValueError, match="unknown template set"):
        resolve_templates("bogus")


def test_unknown_encoder_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: \\['attributes', 'clip', 'minilm', 'wordvec'\\]"):
        build_text_encoder("glove")
