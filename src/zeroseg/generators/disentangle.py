"""PADing's feature disentanglement and semantic-related alignment (CVPR 2023, Sec. 3.3-3.4).

A visual feature is split by two encoders into a semantic-related part E_R (classified against the
class embeddings) and an unrelated part E_U (pushed toward N(0, I)); a decoder reconstructs the
feature from both. The alignment loss makes the relations among class prototypes of the related
features follow those among the classes' semantic embeddings (KL between the two softmaxes).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Disentangler(nn.Module):
    """E_R, E_U (two-layer MLP encoders) and the decoder D of feature disentanglement."""

    def __init__(self, dim: int):
        super().__init__()

        def mlp(cin):
            return nn.Sequential(nn.Linear(cin, dim), nn.LeakyReLU(0.2), nn.Linear(dim, dim))

        self.related, self.unrelated, self.decoder = mlp(dim), mlp(dim), mlp(2 * dim)

    def losses(
        self, x: torch.Tensor, labels: torch.Tensor, class_emb: torch.Tensor, tau: float
    ) -> dict:
        """L_R, L_U, L_recon of features x (n, d) with class positions ``labels`` into class_emb (K, d)."""
        r, u = self.related(x), self.unrelated(x)
        logits = F.normalize(r, dim=-1) @ F.normalize(class_emb, dim=-1).T / tau
        l_r = F.cross_entropy(logits, labels)
        l_u = gaussian_kl(u)
        l_rec = F.l1_loss(self.decoder(torch.cat([r, u], -1)), x)
        return {"l_r": l_r, "l_u": l_u, "l_rec": l_rec, "related": r}


def gaussian_kl(u: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) / d for the batch statistics of u (n, d)."""
    mu, var = u.mean(0), u.var(0, unbiased=False) + 1e-6
    return 0.5 * (var + mu.pow(2) - 1 - var.log()).mean()


def relation_kl(
    feat_a: torch.Tensor,
    feat_b: torch.Tensor,
    sem_a: torch.Tensor,
    sem_b: torch.Tensor,
    tau: float,
    *,
    same: bool,
) -> torch.Tensor:
    """KL(softmax(cos(s_a, s_b)/tau) || softmax(cos(f_a, f_b)/tau)), mean over the rows of a.

    Args:
        feat_a, feat_b: (A, d), (B, d) class prototypes of the visual features.
        sem_a, sem_b: (A, e), (B, e) the classes' semantic embeddings.
        same: a and b are the same group; the diagonal (a class with itself) is left out.
    """
    fs = F.normalize(feat_a, dim=-1) @ F.normalize(feat_b, dim=-1).T / tau
    ss = F.normalize(sem_a, dim=-1) @ F.normalize(sem_b, dim=-1).T / tau
    if same:
        eye = torch.eye(len(fs), dtype=torch.bool, device=fs.device)
        fs, ss = fs.masked_fill(eye, -1e4), ss.masked_fill(eye, -1e4)
    return F.kl_div(fs.log_softmax(-1), ss.log_softmax(-1), log_target=True, reduction="batchmean")


def alignment_loss(seen_feat, unseen_feat, seen_sem, unseen_sem, tau: float) -> torch.Tensor:
    """Relationship alignment within seen, within unseen and across (seen -> unseen), averaged."""
    parts = [relation_kl(seen_feat, unseen_feat, seen_sem, unseen_sem, tau, same=False)]
    if len(seen_feat) > 1:
        parts.append(relation_kl(seen_feat, seen_feat, seen_sem, seen_sem, tau, same=True))
    if len(unseen_feat) > 1:
        parts.append(relation_kl(unseen_feat, unseen_feat, unseen_sem, unseen_sem, tau, same=True))
    return torch.stack(parts).mean()


def class_means(x: torch.Tensor, n_classes: int, per_class: int) -> torch.Tensor:
    """(C*m, d) class-major samples -> (C, d) class means."""
    return x.view(n_classes, per_class, -1).mean(1)
