"""A missing pretrained file names itself, what is expected there and where its authors publish it."""

from __future__ import annotations

import pytest

from zeroseg.models.backbones.resnet import build_resnet, load_torchvision_resnet
from zeroseg.models.pretrained import read_clip_checkpoint
from zeroseg.text.clip_text import CLIPTextEncoder
from zeroseg.text.wordvec import WordVectors


def test_missing_resnet_names_torchvision(tmp_path):
    path = tmp_path / "resnet101-63fe2227.pth"
    with pytest.raises(FileNotFoundError) as e:
        load_torchvision_resnet(build_resnet("resnet18"), path)
    msg = str(e.value)
    assert (
        str(path) in msg and "https://download.pytorch.org/models/" in msg and "state dict" in msg
    )


@pytest.mark.parametrize("load", [read_clip_checkpoint, CLIPTextEncoder])
def test_missing_clip_names_openai_and_hugging_face(tmp_path, load):
    path = tmp_path / "ViT-B-16.pt"
    with pytest.raises(FileNotFoundError) as e:
        load(path)
    msg = str(e.value)
    assert str(path) in msg and "does not exist" in msg
    assert "openaipublic.azureedge.net/clip/models/" in msg and "ViT-B-16.pt" in msg
    assert "huggingface.co/openai/clip-vit-base-patch16" in msg


def test_missing_word_vectors_name_word2vec_and_fasttext(tmp_path):
    path = tmp_path / "w2v.txt"
    with pytest.raises(FileNotFoundError) as e:
        WordVectors.load(path)
    msg = str(e.value)
    assert str(path) in msg and "word2vec" in msg and "fasttext" in msg and "text.encoder" in msg
