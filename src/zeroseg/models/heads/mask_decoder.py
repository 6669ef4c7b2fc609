"""A Mask2Former-style mask-classification model, and its semantic / panoptic / instance inference.

Cheng et al., "Masked-attention Mask Transformer for Universal Image Segmentation", CVPR 2022,
as PADing (He et al., CVPR 2023) and ZegFormer / AlignZeg use it for zero-shot segmentation:

- a backbone and a light pixel decoder give multi-scale features and per-pixel mask embeddings
  ``E_pix`` (B, C, h, w);
- a transformer decoder refines N learnable queries; each layer does *masked* cross-attention
  to one feature scale (round robin, coarse to fine), self-attention among the queries, an FFN
  (Eq. 2-4 of Mask2Former: the attention mask keeps, for each query, only the pixels where the
  previous layer's mask is > 0.5);
- after every layer (and before the first) each query gives a mask ``m_q = sigmoid(mlp(q) · E_pix)``
  and a class embedding ``e_q = W q`` in the text-embedding space (deep supervision: every layer's
  prediction is matched and supervised);
- classification is open-vocabulary (ZegFormer, Ding et al. CVPR 2022): the logit of class k is
  ``s · cos(e_q, t_k)`` for text embedding ``t_k`` with a learned scale ``s``, and a learned
  no-object embedding gives the (K+1)-th logit ``s · cos(e_q, t_null)``.

Inference follows Mask2Former's rules (``semantic_inference`` / ``panoptic_inference`` /
``instance_inference`` in its ``maskformer_model.py``):

- semantic: ``S[k] = sum_q softmax(logits_q)[k] · sigmoid(m_q)`` without the no-object column;
- panoptic: keep queries whose class is not no-object with score > ``object_threshold``; each
  pixel goes to the kept query of largest ``score · mask``; a query whose pixels so kept are
  < ``overlap_threshold`` of its own mask (> 0.5) is dropped; stuff segments of one class merge;
- instance: the top-k (query, class) pairs by class probability (thing classes only), each
  scored by class probability × the mean mask probability inside its binary mask.

Public API::

    model = MaskClassifier(MaskModelConfig(), embed_dim=D)
    out = model(images)                          # MaskOutputs: masks (B,N,h,w), embeddings (B,N,D), aux
    logits = model.classify(out.embeddings, T)   # (B,N,K+1) for text embeddings T (K,D)
    semantic_inference(logits.softmax(-1)[..., :-1], out.masks.sigmoid())   # (B,K,h,w)
    panoptic_inference(probs[b], masks[b].sigmoid(), is_thing)             # (h,w) ids, (n,3) rows
    instance_inference(probs[b], masks[b], is_thing)                       # masks, scores, labels
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from zeroseg.engine.trainer import scaled_lr_groups
from zeroseg.models.attention import MultiheadAttention
from zeroseg.models.backbones.small import SmallUNet, SmallUNetConfig

__all__ = [
    "MaskClassifier",
    "MaskModelConfig",
    "MaskOutputs",
    "TextClassifier",
    "instance_inference",
    "panoptic_inference",
    "semantic_inference",
]


# MaskModelConfig.text_map's values
TEXT_MAPS = ("none", "frozen", "learned")


@dataclass
class MaskModelConfig:
    """Sizes of the mask-classification model (ShapeWorld defaults; the paper: 100 / 9 / 256)."""

    backbone: str = "unet-small"  # unet-small | resnet18 | resnet34 | resnet50 | resnet101
    unet: SmallUNetConfig = field(default_factory=SmallUNetConfig)  # for backbone=unet-small
    hidden_dim: int = 64  # transformer width (Mask2Former: 256)
    mask_dim: int = 64  # per-pixel mask-embedding channels (Mask2Former: 256)
    num_queries: int = 16  # learnable queries N (Mask2Former / PADing: 100)
    layers: int = 3  # decoder layers, round robin over the 3 scales (Mask2Former: 9)
    heads: int = 4  # attention heads (Mask2Former: 8)
    ffn_dim: int = 128  # FFN hidden width (Mask2Former: 2048)
    dropout: float = 0.0  # attention / FFN dropout (Mask2Former: 0.0)
    init_temperature: float = 0.07  # initial 1/s of the cosine classifier (CLIP's init)
    # The pretrained backbone's learning rate over the stage's (Mask2Former's BACKBONE_MULTIPLIER,
    # 0.1 in its and PADing's configs); 0 freezes it (weights and batch-norm statistics). The
    # pyramid's new layers, the pixel and transformer decoders train at the stage's rate.
    backbone_lr_mult: float = 1.0
    # The class side of the query classifier: "none" (the text embeddings as they are), or the
    # ShapeWorld foundation's text-side map (the linear map its projection head matches pixel
    # embeddings against; copied in by the method), "frozen" or "learned" at the stage's rate:
    # the foundation's text tower, as the papers classify queries against CLIP's text tower.
    text_map: str = "none"

    def __post_init__(self) -> None:
        if self.text_map not in TEXT_MAPS:
            raise ValueError(
                f"MaskModelConfig.text_map must be one of {list(TEXT_MAPS)}, got {self.text_map!r}"
            )


@dataclass
class MaskOutputs:
    """The decoder's predictions.

    Attributes:
        masks: (B, N, h, w) mask logits of the last layer at the mask-feature resolution.
        embeddings: (B, N, D) class embeddings of the last layer (not normalised).
        aux: [(masks, embeddings)] of the earlier layers (input queries first), for deep supervision.
    """

    masks: Tensor
    embeddings: Tensor
    aux: list[tuple[Tensor, Tensor]]


def sine_position(x: Tensor, dim: int) -> Tensor:
    """(B, C, h, w) -> (B, h*w, dim) 2-D sine position embedding (DETR's, normalised to [0, 2pi])."""
    _, _, h, w = x.shape
    half = dim // 2
    y_pos = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    x_pos = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    freq = 10000 ** (2 * (torch.arange(half // 2, device=x.device, dtype=torch.float32)) / half)
    py = y_pos[:, None] / freq  # (h, half/2)
    px = x_pos[:, None] / freq
    py = torch.cat([py.sin(), py.cos()], -1)[:, None, :].expand(h, w, -1)
    px = torch.cat([px.sin(), px.cos()], -1)[None, :, :].expand(h, w, -1)
    pos = torch.cat([py, px], -1).reshape(h * w, -1)
    if pos.shape[1] < dim:  # odd leftovers of dim not divisible by 4
        pos = F.pad(pos, (0, dim - pos.shape[1]))
    return pos[None].expand(x.shape[0], -1, -1).to(x.dtype)


class UNetPyramid(nn.Module):
    """SmallUNet read out at strides 16, 8, 4, 2 (coarse to fine; its decoder is the FPN).

    As Mask2Former attends to 1/32, 1/16, 1/8 and predicts masks at 1/4, the transformer attends
    to strides 16, 8, 4 (a stride-2 conv on the context features adds the coarsest) and masks
    come from the stride-2 decoder output: on 64 px images, 4x4 ... 16x16 tokens and 32x32 masks.
    """

    def __init__(self, cfg: SmallUNetConfig):
        super().__init__()
        self.unet = SmallUNet(cfg)
        w = cfg.widths
        self.down = nn.Sequential(
            nn.Conv2d(w[3], w[3], 3, stride=2, padding=1), nn.ReLU(inplace=True)
        )
        self.channels = (w[3], w[3], w[2], cfg.out_dim)  # coarse -> fine

    def forward(self, x: Tensor) -> list[Tensor]:
        u = self.unet
        e2 = u.enc2(u.enc1(x))
        e3 = u.enc3(e2)
        e4 = u.context(u.enc4(e3))
        up = F.interpolate(e4, size=e3.shape[-2:], mode="bilinear", align_corners=False)
        d3 = u.dec3(torch.cat([up, e3], 1))
        up = F.interpolate(d3, size=e2.shape[-2:], mode="bilinear", align_corners=False)
        d2 = u.dec2(torch.cat([up, e2], 1))
        return [self.down(e4), e4, d3, d2]


class ResNetPyramid(nn.Module):
    """A ResNet with a top-down FPN: levels at strides 32, 16, 8 and mask features at stride 4."""

    def __init__(self, name: str, width: int):
        super().__init__()
        from zeroseg.models.backbones.resnet import build_resnet

        self.resnet = build_resnet(name)
        r = self.resnet
        c4, c1 = r.out_channels, r.low_level_channels  # layer2/3 have c4/4 and c4/2 channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in (c4, c4 // 2, c4 // 4, c1))
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(4))
        self.channels = (width, width, width, width)

    def forward(self, x: Tensor) -> list[Tensor]:
        r = self.resnet
        c1 = r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x)))))
        c2 = r.layer2(c1)
        c3 = r.layer3(c2)
        c4 = r.layer4(c3)
        outs, prev = [], None
        for lat, smooth, c in zip(self.lateral, self.smooth, (c4, c3, c2, c1)):
            y = lat(c)
            if prev is not None:
                y = y + F.interpolate(prev, size=y.shape[-2:], mode="nearest")
            prev = y
            outs.append(F.relu(smooth(y)))
        return [outs[0], outs[1], outs[2], outs[3]]


class DecoderLayer(nn.Module):
    """Masked cross-attention, self-attention, FFN, each with a residual and a post-norm."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.cross = MultiheadAttention(dim, heads, dropout=dropout)
        self.self_attn = MultiheadAttention(dim, heads, dropout=dropout)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, dim),
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.heads = heads

    def forward(
        self, q: Tensor, q_pos: Tensor, mem: Tensor, mem_pos: Tensor, attn_mask: Tensor | None
    ) -> Tensor:
        """q (B,N,C), mem (B,L,C); attn_mask (B*heads, N, L) bool, True = not attended."""
        a = self.cross(q + q_pos, mem + mem_pos, mem, attn_mask=attn_mask, need_weights=False)[0]
        q = self.norms[0](q + a)
        a = self.self_attn(q + q_pos, q + q_pos, q, need_weights=False)[0]
        q = self.norms[1](q + a)
        return self.norms[2](q + self.ffn(q))


class TextClassifier(nn.Module):
    """Open-vocabulary query classification: ``s · cos(e_q, t_k)`` plus a learned no-object logit.

    Args:
        embed_dim: D, the text-embedding dimension.
        init_temperature: 1/s at initialisation.
    """

    def __init__(self, embed_dim: int, init_temperature: float = 0.07):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.null = nn.Parameter(torch.randn(embed_dim) / math.sqrt(embed_dim))

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def forward(self, embeddings: Tensor, class_embeddings: Tensor) -> Tensor:
        """(..., D) query embeddings and (K, D) text embeddings -> (..., K+1) logits (last: no-object)."""
        e = F.normalize(embeddings.float(), dim=-1)
        t = F.normalize(
            torch.cat([class_embeddings.float().to(e.device), self.null[None].float()]), dim=-1
        )
        return self.scale() * e @ t.T


class MaskClassifier(nn.Module):
    """Backbone + pixel decoder + masked-attention transformer decoder + open-vocabulary classifier.

    Args:
        cfg: sizes, see :class:`MaskModelConfig`.
        embed_dim: D, the dimension of the class (text) embeddings the queries are classified by.
    """

    def __init__(self, cfg: MaskModelConfig, *, embed_dim: int):
        super().__init__()
        self.cfg, self.embed_dim = cfg, embed_dim
        self.register_buffer(
            "pixel_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
        )
        self.register_buffer(
            "pixel_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
        )
        c = cfg.hidden_dim
        # Both backbones give 4 levels, coarse to fine: 3 for attention, the finest for masks.
        if cfg.backbone == "unet-small":
            self.backbone: nn.Module = UNetPyramid(cfg.unet)
        elif cfg.backbone.startswith("resnet"):
            self.backbone = ResNetPyramid(cfg.backbone, c)
        else:
            raise ValueError(
                f"unknown mask-model backbone {cfg.backbone!r}; valid: unet-small, resnet18, "
                "resnet34, resnet50, resnet101"
            )
        levels, mask_in = self.backbone.channels[:3], self.backbone.channels[3]
        # Pixel decoder: 1x1 projections of the three transformer scales and a mask-feature conv.
        self.input_proj = nn.ModuleList(nn.Conv2d(ch, c, 1) for ch in levels)
        self.level_embed = nn.Embedding(3, c)
        self.mask_features = nn.Sequential(
            nn.Conv2d(mask_in, cfg.mask_dim, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cfg.mask_dim, cfg.mask_dim, 1),
        )
        self.query_feat = nn.Embedding(cfg.num_queries, c)
        self.query_pos = nn.Embedding(cfg.num_queries, c)
        self.layers = nn.ModuleList(
            DecoderLayer(c, cfg.heads, cfg.ffn_dim, cfg.dropout) for _ in range(cfg.layers)
        )
        self.decoder_norm = nn.LayerNorm(c)
        self.mask_embed = nn.Sequential(
            nn.Linear(c, c),
            nn.ReLU(inplace=True),
            nn.Linear(c, c),
            nn.ReLU(inplace=True),
            nn.Linear(c, cfg.mask_dim),
        )
        self.class_embed = nn.Linear(c, embed_dim)
        self.classifier = TextClassifier(embed_dim, cfg.init_temperature)
        self.text_map: nn.Linear | None = None
        if cfg.text_map != "none":
            self.text_map = nn.Linear(embed_dim, embed_dim, bias=False)
            nn.init.eye_(self.text_map.weight)
            self.text_map.requires_grad_(cfg.text_map == "learned")
        if cfg.backbone_lr_mult < 0:
            raise ValueError(f"mask.backbone_lr_mult must be >= 0, got {cfg.backbone_lr_mult}")
        if cfg.backbone_lr_mult == 0:
            self.pretrained_backbone().requires_grad_(False)

    # -- the pretrained part and its learning rate --------------------------------------------
    def pretrained_backbone(self) -> nn.Module:
        """The part of the backbone that starts from pretrained weights (the U-Net / the ResNet)."""
        b = self.backbone
        return b.unet if isinstance(b, UNetPyramid) else b.resnet

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.backbone_lr_mult == 0:
            self.pretrained_backbone().eval()  # frozen: batch-norm statistics stay pretrained
        return self

    def param_groups(self, params, lr: float) -> list | None:
        """``params`` (a stage's parameters) as optimiser groups: the pretrained backbone's at
        ``lr * backbone_lr_mult`` (none when frozen), the rest at ``lr``; None (one group) at 1.
        ``build_optimizer`` leaves out the parameters that need no gradient."""
        return scaled_lr_groups(params, self.pretrained_backbone(), lr, self.cfg.backbone_lr_mult)

    # -- forward -----------------------------------------------------------------------------
    def _level(self, i: int, f: Tensor) -> tuple[tuple[int, int], Tensor, Tensor]:
        """Projected pyramid level ``i`` (B, C, h, w) -> its size, sine positions and memory tokens
        (B, h*w, C) with the level embedding added."""
        tokens = f.flatten(2).transpose(1, 2) + self.level_embed.weight[i][None, None]
        return tuple(f.shape[-2:]), sine_position(f, f.shape[1]), tokens

    def _queries(self, b: int) -> tuple[Tensor, Tensor]:
        """The learned queries and their positions, (B, N, C) each."""
        return (
            self.query_feat.weight[None].expand(b, -1, -1),
            self.query_pos.weight[None].expand(b, -1, -1),
        )

    def _predict(self, q: Tensor, mask_feats: Tensor, attn_size: tuple[int, int] | None):
        """The prediction step after each decoder layer (Mask2Former), shared by every mask model.

        Returns:
            mask logits (B,N,h,w), class embeddings (B,N,D), the normalised query states (B,N,C)
            and the next layer's attention mask (None when ``attn_size`` is None).
        """
        h = self.decoder_norm(q)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(h), mask_feats)
        emb = self.class_embed(h)
        attn = None
        if attn_size is not None:
            m = F.interpolate(
                masks.detach().float(), size=attn_size, mode="bilinear", align_corners=False
            )
            attn = (m.sigmoid() < 0.5).flatten(2)  # (B, N, L), True = blocked
            # A query whose mask is empty attends everywhere, as in Mask2Former.
            attn[attn.all(-1)] = False
            attn = attn.repeat_interleave(self.cfg.heads, dim=0)
        return masks, emb, h, attn

    def forward(self, images: Tensor) -> MaskOutputs:
        """(B, 3, H, W) uint8 images (H, W multiples of 8; 32 for ResNets) -> :class:`MaskOutputs`."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        feats = self.backbone(x)
        mask_feats = self.mask_features(feats[-1])
        levels = [self._level(i, self.input_proj[i](feats[i])) for i in range(3)]
        sizes, poss, mems = (list(x) for x in zip(*levels))
        q, q_pos = self._queries(images.shape[0])
        preds = []
        masks, emb, _, attn = self._predict(q, mask_feats, sizes[0])
        preds.append((masks, emb))
        for i, layer in enumerate(self.layers):
            lvl = i % 3
            q = layer(
                q, q_pos, mems[lvl], poss[lvl], attn.to(q.device) if attn is not None else None
            )
            masks, emb, _, attn = self._predict(q, mask_feats, sizes[(i + 1) % 3])
            preds.append((masks, emb))
        return MaskOutputs(masks=preds[-1][0], embeddings=preds[-1][1], aux=preds[:-1])

    def class_vectors(self, class_embeddings: Tensor) -> Tensor:
        """(K, D) text embeddings -> (K, D) class vectors the queries are matched against (not
        normalised): through ``text_map`` when there is one (fp32, outside autocast), else the
        embeddings themselves, the same tensor (so a model without the map computes exactly
        what it did before the option existed)."""
        if self.text_map is None:
            return class_embeddings
        with torch.autocast(class_embeddings.device.type, enabled=False):
            return self.text_map(class_embeddings.float().to(self.text_map.weight.device))

    def classify(self, embeddings: Tensor, class_embeddings: Tensor) -> Tensor:
        """(..., D) query embeddings, (K, D) text embeddings -> (..., K+1) logits; last = no-object."""
        return self.classifier(embeddings, self.class_vectors(class_embeddings))


# -- inference (Mask2Former's rules) -------------------------------------------------------------


def semantic_inference(class_probs: Tensor, mask_probs: Tensor) -> Tensor:
    """Per-pixel class scores from query predictions.

    Args:
        class_probs: (B, N, K) class probabilities with the no-object column removed.
        mask_probs: (B, N, h, w) sigmoid masks.

    Returns:
        (B, K, h, w) ``sum_q class_probs[q, k] · mask_probs[q]``.
    """
    return torch.einsum("bqk,bqhw->bkhw", class_probs.float(), mask_probs.float())


def panoptic_inference(
    probs: Tensor,
    mask_probs: Tensor,
    is_thing: Tensor,
    *,
    object_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> tuple[Tensor, Tensor]:
    """Panoptic segments of one image.

    Args:
        probs: (N, K+1) class probabilities, the last column no-object.
        mask_probs: (N, h, w) sigmoid masks.
        is_thing: (K,) bool, which classes are things (stuff segments of a class are merged).
        object_threshold: a query is kept when its best class is not no-object with probability
            above this.
        overlap_threshold: a kept query whose won pixels are less than this fraction of its own
            mask (> 0.5) is dropped (it is mostly hidden by others).

    Returns:
        ``panoptic`` (h, w) int64 segment ids (0 = void) and ``segments`` (n, 3) int64 rows
        ``(segment_id, class, is_thing)``, as ShapeWorld's ground truth.
    """
    k = probs.shape[1] - 1
    scores, labels = probs.max(-1)
    keep = (labels != k) & (scores > object_threshold)
    h, w = mask_probs.shape[-2:]
    pan = torch.zeros((h, w), dtype=torch.int64, device=mask_probs.device)
    rows: list[tuple[int, int, int]] = []
    if not keep.any():
        return pan, torch.zeros((0, 3), dtype=torch.int64)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_probs[keep].float()
    winner = (cur_scores[:, None, None] * cur_masks).argmax(0)  # (h, w)
    stuff_ids: dict[int, int] = {}
    next_id = 0
    for q in range(len(cur_classes)):
        cls = int(cur_classes[q])
        own = cur_masks[q] >= 0.5
        won = winner == q
        seg = won & own
        won_area, own_area, seg_area = int(won.sum()), int(own.sum()), int(seg.sum())
        if won_area == 0 or own_area == 0 or seg_area == 0:
            continue
        if won_area / own_area < overlap_threshold:
            continue
        thing = bool(is_thing[cls])
        if not thing and cls in stuff_ids:
            pan[seg] = stuff_ids[cls]
            continue
        next_id += 1
        if not thing:
            stuff_ids[cls] = next_id
        pan[seg] = next_id
        rows.append((next_id, cls, int(thing)))
    return pan, torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)


def instance_inference(
    probs: Tensor, mask_logits: Tensor, is_thing: Tensor, *, topk: int = 100
) -> tuple[Tensor, Tensor, Tensor]:
    """Instance predictions of one image: the top-k (query, class) pairs over thing classes.

    Args:
        probs: (N, K+1) class probabilities, the last column no-object.
        mask_logits: (N, h, w) mask logits.
        is_thing: (K,) bool; only thing classes give instances.
        topk: pairs kept (Mask2Former: 100 per image).

    Returns:
        ``masks`` (M, h, w) bool, ``scores`` (M,) = class probability × mean mask probability
        inside the binary mask, ``labels`` (M,) int64.
    """
    n, k1 = probs.shape
    cls = probs[:, :-1].float() * is_thing.to(probs.device)[None].float()
    flat = cls.flatten()
    top = min(topk, flat.numel())
    scores, idx = flat.topk(top)
    query, labels = idx // (k1 - 1), idx % (k1 - 1)
    valid = scores > 0  # stuff classes were zeroed
    scores, query, labels = scores[valid], query[valid], labels[valid]
    logits = mask_logits[query].float()
    masks = logits > 0
    mp = logits.sigmoid()
    mask_score = (mp * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    return masks, scores * mask_score, labels
