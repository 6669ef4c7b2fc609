"""The projection head's scores, computed in the hidden space, equal the cosine of its unit pixel
embeddings with the unit text embeddings (the definition), in value and in gradient."""

import pytest
import torch
import torch.nn.functional as F

from zeroseg.models.heads.projection import ProjectionHead


def definition(head: ProjectionHead, features, text):
    """scale * cos(embed(features), text_proj(text)), through the D-dim pixel embedding."""
    pix = head.embed(features).float()
    t = head.text_proj(text) if head.text_proj is not None else text
    scale = head.log_scale.exp().clamp(1.0, 100.0)
    return scale * torch.einsum("bdhw,kd->bkhw", pix, F.normalize(t.float(), dim=-1))


def make_head(text_proj: bool) -> ProjectionHead:
    torch.manual_seed(0)
    head = ProjectionHead(16, 48, text_proj=text_proj)
    with torch.no_grad():  # away from the identity / zero-bias initialisation
        if head.text_proj is not None:
            head.text_proj.weight.add_(0.1 * torch.randn(48, 48))
        head.proj[-1].bias.normal_(0.0, 0.5)
        head.log_scale.fill_(2.5)
    return head.eval()


@pytest.mark.parametrize("text_proj", [True, False])
def test_scores_and_gradients_equal_the_cosine_definition(text_proj):
    head = make_head(text_proj)
    features = torch.randn(2, 16, 6, 5)
    text = torch.randn(7, 48)
    want = definition(head, features, text)
    got = head(features, text)
    assert got.dtype == torch.float32 and got.shape == (2, 7, 6, 5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    weights = torch.randn_like(want)
    grads_want = torch.autograd.grad((want * weights).sum(), list(head.parameters()))
    grads_got = torch.autograd.grad((head(features, text) * weights).sum(), list(head.parameters()))
    for name, g_want, g_got in zip(
        [n for n, _ in head.named_parameters()], grads_want, grads_got, strict=True
    ):
        torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-5, msg=name)


def test_bf16_autocast_keeps_the_scores_in_fp32_close_to_the_definition():
    head = make_head(True)
    features = torch.randn(2, 16, 6, 5)
    text = torch.randn(7, 48)
    want = definition(head, features, text)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(features, text)
    assert got.dtype == torch.float32
    # only the 3x3 convolution before the last layer runs in bf16
    torch.testing.assert_close(got, want, rtol=0.0, atol=0.1)


def test_a_pixel_whose_embedding_vanishes_scores_zero_not_nan():
    head = make_head(False)
    with torch.no_grad():  # the last layer maps everything to 0: z = 0 at every pixel
        head.proj[-1].weight.zero_()
        head.proj[-1].bias.zero_()
    got = head(torch.randn(1, 16, 3, 3), torch.randn(4, 48))
    assert torch.equal(got, torch.zeros_like(got))


def test_cosine_classifier_starts_from_the_heads_scores_and_trains_apart_from_it():
    """ZS3Net's stage-3 classifier (head: projection): built from a trained head it scores every
    class as the head does (any subset of rows too); training it leaves the head untouched."""
    from zeroseg.models.heads.projection import CosineClassifier

    head = make_head(True)
    features = torch.randn(2, 16, 6, 5)
    text = torch.randn(7, 48)
    clf = CosineClassifier(head, text)
    hidden = head.proj[:-1](features)
    torch.testing.assert_close(clf(hidden), head(features, text), rtol=1e-5, atol=1e-5)
    rows = torch.tensor([4, 0, 6])
    torch.testing.assert_close(clf(hidden, rows), head(features, text)[:, rows])

    before = {k: v.clone() for k, v in head.state_dict().items()}
    opt = torch.optim.SGD(clf.parameters(), lr=1.0)
    clf(hidden.detach()).logsumexp(1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in clf.parameters())
    opt.step()
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in before.items())
    assert not torch.allclose(clf(hidden), head(features, text))


def test_cosine_classifier_without_train_shared_trains_the_class_vectors_only():
    from zeroseg.models.heads.projection import CosineClassifier

    head = make_head(True)
    clf = CosineClassifier(head, torch.randn(5, 48), train_shared=False)
    trained = [n for n, p in clf.named_parameters() if p.requires_grad]
    assert trained == ["weight"]
    clf(head.proj[:-1](torch.randn(2, 16, 4, 4))).logsumexp(1).mean().backward()
    assert clf.weight.grad.abs().sum() > 0
    assert clf.last.weight.grad is None and clf.log_scale.grad is None
