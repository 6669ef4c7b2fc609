"""Where the pretrained inputs of the papers' presets are published, for errors about missing files.

zeroseg downloads nothing: a preset names local paths (``model.pretrained``,
``model.pretrained_backbone``, ``text.encoder: clip:PATH | wordvec:PATH``). When one is missing, the
error says which file is expected, in which format, and where its authors publish it, so a user can
fetch it on a machine with network access.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_OPENAI = "https://openaipublic.azureedge.net/clip/models/"


@dataclass(frozen=True)
class Source:
    what: str  # the file or directory expected, and its format
    where: str  # who publishes it, at which address


SOURCES: dict[str, Source] = {
    "clip": Source(
        what="an OpenAI CLIP checkpoint (a TorchScript archive such as ViT-B-16.pt, or its plain "
        "state dict) or a Hugging Face CLIP directory (config.json + model.safetensors)",
        where="OpenAI publishes ViT-B/16 at "
        f"{_OPENAI}5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt, "
        f"ViT-B/32 at {_OPENAI}40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/"
        f"ViT-B-32.pt and ViT-L/14 at {_OPENAI}b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0e"
        "ca1737a03836/ViT-L-14.pt (the addresses in openai/CLIP's clip/clip.py); the Hugging Face "
        "copies are https://huggingface.co/openai/clip-vit-base-patch16 (-base-patch32, "
        "-large-patch14)",
    ),
    "resnet": Source(
        what="a torchvision ImageNet ResNet state dict (.pth), e.g. resnet101-63fe2227.pth",
        where="torchvision publishes them at https://download.pytorch.org/models/<file> "
        "(resnet50-0676ba61.pth, resnet101-63fe2227.pth; the V2 weights resnet50-11ad3fa6.pth, "
        "resnet101-cd907fc2.pth also load)",
    ),
    "wordvec": Source(
        what="a word-vector text file: one 'word v1 ... vd' line per word (an optional first "
        "'count dim' line), as word2vec's and fastText's .txt/.vec exports",
        where="ZS3Net uses word2vec's GoogleNews-vectors-negative300 (Google, "
        "https://code.google.com/archive/p/word2vec/; the .bin converts to text with gensim's "
        "KeyedVectors.save_word2vec_format(binary=False)); fastText publishes "
        "https://dl.fbaipublicfiles.com/fasttext/vectors-english/crawl-300d-2M.vec.zip",
    ),
}


def missing_file(kind: str, path: str | Path, *, key: str | None = None) -> FileNotFoundError:
    """A ``FileNotFoundError`` naming ``path``, what is expected there and where it is published.

    Args:
        kind: a key of :data:`SOURCES` (``clip``, ``resnet``, ``wordvec``).
        path: the path that does not exist.
        key: the config key that named it, if any (e.g. ``model.pretrained``).
    """
    src = SOURCES[kind]
    named = f" (named by {key})" if key else ""
    return FileNotFoundError(
        f"{path} does not exist{named}. Expected {src.what}. {src.where}. Nothing is downloaded "
        "at run time: fetch the file on a machine with network access and point the config at "
        "the local copy."
    )
