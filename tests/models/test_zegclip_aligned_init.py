"""ZegCLIP's decoder started as the encoder's own pixel-name match (``aligned_init``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zeroseg.models.heads.projection import ProjectionHead
from zeroseg.models.heads.zegclip_decoder import ZegCLIPDecoder, ZegCLIPDecoderConfig

D = 48  # token / text dimension


def _tokens_and_text(seed: int = 0):
    """Unit tokens (2, 6, 6, D) of a random projection head (hidden width 8), unit text (5, D)."""
    torch.manual_seed(seed)
    head = ProjectionHead(8, D).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
        tokens = head.embed(torch.randn(2, 8, 6, 6)).permute(0, 2, 3, 1)
    text = F.normalize(torch.randn(5, D), dim=-1)
    return head, tokens, text


def _decoder(aligned: bool, **kw) -> ZegCLIPDecoder:
    cfg = ZegCLIPDecoderConfig(
        width=32, layers=3, heads=4, dropout=0.0, mask_scale=8.0, aligned_init=aligned, **kw
    )
    return ZegCLIPDecoder(cfg, visual_dim=D, text_dim=D).eval()


def test_embedding_basis_spans_every_pixel_embedding_and_is_orthonormal():
    head, tokens, _ = _tokens_and_text()
    basis = head.embedding_basis()
    assert basis.shape == (D, 9) == (D, head.embedding_rank_bound)  # 8 columns and the bias
    torch.testing.assert_close(basis.T @ basis, torch.eye(9), atol=1e-5, rtol=0)
    flat = tokens.reshape(-1, D)
    torch.testing.assert_close(flat @ basis @ basis.T, flat, atol=1e-5, rtol=0)
    pooled = F.normalize(flat.mean(0), dim=-1)  # pooled tokens and the CLS stay in the span
    torch.testing.assert_close(basis @ (basis.T @ pooled), pooled, atol=1e-5, rtol=0)


def test_aligned_masks_start_as_the_scaled_cosine_match():
    head, tokens, text = _tokens_and_text()
    cls = F.normalize(tokens.mean((1, 2)), dim=-1)
    dec = _decoder(True, aligned_scale=15.0)
    dec.align(head.embedding_basis())
    with torch.no_grad():
        masks = dec(tokens, cls, text)
        match = torch.einsum("bhwd,kd->bkhw", tokens, text)
        # layer 1 reads the text half of the queries as it is: the match (up to the
        # LayerNorm's eps)
        torch.testing.assert_close(masks[0], 15.0 * match, atol=1e-3, rtol=1e-3)
        # later layers read LayerNorm'd queries: the match divided by each class's query norm
        norm = dec.queries(text, cls)[0].norm(dim=-1)  # (K,): the same for every image
        for later in masks[1:]:
            torch.testing.assert_close(
                later, 15.0 * match / norm[None, :, None, None], atol=1e-3, rtol=1e-3
            )
        assert torch.equal(
            dec.predict(tokens, cls, dec.text_side(text)).argmax(1), masks[-1].argmax(1)
        )


def test_the_random_start_is_not_the_match():
    _, tokens, text = _tokens_and_text()
    cls = F.normalize(tokens.mean((1, 2)), dim=-1)
    with torch.no_grad():
        mask = _decoder(False)(tokens, cls, text)[0]
    match = torch.einsum("bhwd,kd->bkhw", tokens, text)
    assert not torch.allclose(mask, 20.0 * match, atol=1e-2)


def test_aligned_init_refuses_what_it_cannot_keep():
    head, _, _ = _tokens_and_text()
    with pytest.raises(ValueError, match="input_proj"):
        cfg = ZegCLIPDecoderConfig(width=D, heads=4, input_proj=False, aligned_init=True)
        ZegCLIPDecoder(cfg, visual_dim=D, text_dim=D).align(head.embedding_basis())
    with pytest.raises(ValueError, match="must exceed"):
        cfg = ZegCLIPDecoderConfig(width=8, heads=2, aligned_init=True)
        ZegCLIPDecoder(cfg, visual_dim=D, text_dim=D).align(head.embedding_basis())
    with pytest.raises(ValueError, match="aligned_scale"):
        cfg = ZegCLIPDecoderConfig(width=32, heads=2, aligned_init=True, aligned_scale=0.0)
        ZegCLIPDecoder(cfg, visual_dim=D, text_dim=D).align(head.embedding_basis())
