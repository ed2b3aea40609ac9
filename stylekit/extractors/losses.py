"""Contrastive losses for style extractors.

Embeddings are ``(N, D)`` float tensors; every loss L2-normalises them itself and compares with cosine
similarity ``s_ij = z_i . z_j`` over a temperature ``tau``. All return a scalar (mean over anchors).

Library split (why: docs/extractors.md): NT-Xent, SupCon and the symmetric image-text InfoNCE call
pytorch-metric-learning (``NTXentLoss``, ``SupConLoss``), which implements them exactly; the rest --
query/key InfoNCE with unpaired or paired (per-anchor) negatives, weighted multi-label SupCon (CSD), DCL,
MoCHi, CWCL, alignment/uniformity -- is not in that library (or only in heavy ones) and is written here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "alignment_loss",
    "cwcl",
    "dcl",
    "info_nce",
    "mochi_info_nce",
    "nt_xent",
    "paired_info_nce",
    "supcon",
    "symmetric_info_nce",
    "uniformity_loss",
    "weighted_supcon",
]


def _pml():
    from pytorch_metric_learning import losses

    return losses


def _n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{names}: expected two (N, D) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent over two views (pytorch-metric-learning ``NTXentLoss``).

    For each of the ``2N`` views ``i`` with positive ``j`` (the other view of the same item):
    ``-log exp(s_ij/tau) / sum_{k != i} exp(s_ik/tau)``, averaged over the ``2N`` anchors.
    """
    _check_pair(z1, z2, "nt_xent")
    n = z1.shape[0]
    labels = torch.arange(n, device=z1.device).repeat(2)
    return _pml().NTXentLoss(temperature=temperature)(torch.cat([z1, z2]), labels)


def symmetric_info_nce(image: torch.Tensor, text: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """CLIP's symmetric image-text InfoNCE: mean of cross-entropy over rows (image -> text) and columns.

    Row ``i`` of ``image`` matches row ``i`` of ``text``; both directions use pytorch-metric-learning's
    ``NTXentLoss`` with ``ref_emb`` (one term per matched pair, all other rows negatives).
    """
    _check_pair(image, text, "symmetric_info_nce")
    labels = torch.arange(image.shape[0], device=image.device)
    # ref_labels must be a different tensor object: pytorch-metric-learning treats `ref_labels is labels` as
    # "embeddings compared with themselves" and drops the diagonal -- here the matched pairs.
    ref = labels.clone()
    loss = _pml().NTXentLoss(temperature=temperature)
    return 0.5 * (
        loss(image, labels, ref_emb=text, ref_labels=ref) + loss(text, labels, ref_emb=image, ref_labels=ref)
    )


def supcon(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss ``L_out`` (Khosla et al.; pytorch-metric-learning ``SupConLoss``).

    ``l_i = -(1/|P(i)|) sum_{p in P(i)} log exp(s_ip/tau) / sum_{a != i} exp(s_ia/tau)`` with ``P(i)`` the
    other samples of ``i``'s label; anchors without positives are skipped.
    """
    return _pml().SupConLoss(temperature=temperature)(embeddings, labels)


def weighted_supcon(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    base_temperature: float | None = None,
) -> torch.Tensor:
    """Multi-label SupCon with weighted positives (CSD).

    Args:
        embeddings: ``(N, D)``.
        labels: ``(N, L)`` multi-hot tags, weights ``W = labels @ labels.T`` (the number of shared tags), or
            ``(N,)`` integer labels (``W`` = same label: plain SupCon).
        temperature: ``tau`` (CSD: 0.1).
        base_temperature: the loss is scaled by ``tau / base_temperature`` (HobbitLong's convention; CSD
            runs with 1.0, i.e. a 0.1 scale). Default: ``tau`` (no scaling).

    Returns:
        ``mean_i [ -sum_{j != i} w_ij log p_ij / sum_{j != i} w_ij ]`` over anchors with some positive weight,
        ``p_ij = exp(s_ij/tau) / sum_{k != i} exp(s_ik/tau)``.
    """
    if labels.ndim == 1:
        weights = (labels[:, None] == labels[None, :]).to(embeddings.dtype)
    elif labels.ndim == 2 and labels.shape[0] == embeddings.shape[0]:
        weights = labels.to(embeddings.dtype) @ labels.to(embeddings.dtype).T
    else:
        raise ValueError(
            f"weighted_supcon: labels {tuple(labels.shape)} do not fit embeddings {tuple(embeddings.shape)}"
        )
    z = _n(embeddings)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    weights = weights.masked_fill(eye, 0.0)
    total = weights.sum(1)
    valid = total > 0
    if not valid.any():
        return embeddings.sum() * 0.0
    per_anchor = -(weights * log_prob.masked_fill(eye, 0.0)).sum(1)[valid] / total[valid]
    scale = 1.0 if base_temperature is None else temperature / base_temperature
    return scale * per_anchor.mean()


def info_nce(
    query: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.1,
) -> torch.Tensor:
    """InfoNCE with explicit keys: ``-log exp(s(q,k+)/tau) / (exp(s(q,k+)/tau) + sum_n exp(s(q,n)/tau))``.

    Args:
        query, positive: ``(N, D)``; row ``i`` of ``positive`` is query ``i``'s positive.
        negatives: ``(M, D)`` shared by all queries (a queue / memory bank), ``(N, M, D)`` per query
            ("paired", see :func:`paired_info_nce`), or None: the other rows of ``positive`` (in-batch).
    """
    _check_pair(query, positive, "info_nce")
    q, p = _n(query), _n(positive)
    pos = (q * p).sum(-1, keepdim=True)
    if negatives is None:
        logits = q @ p.T / temperature
        return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))
    neg_n = _n(negatives)
    if negatives.ndim == 2:
        neg = q @ neg_n.T
    elif negatives.ndim == 3 and negatives.shape[0] == q.shape[0] and negatives.shape[-1] == q.shape[-1]:
        neg = torch.einsum("nd,nmd->nm", q, neg_n)
    else:
        raise ValueError(
            f"info_nce: negatives {tuple(negatives.shape)} do not fit queries {tuple(query.shape)}"
        )
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def paired_info_nce(
    query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """FontDiffuser's style-contrastive (SCR) loss: InfoNCE where each query has its own negatives.

    Args:
        query: ``(N, D)`` anchors; positive: ``(N, D)`` same style, other content.
        negatives: ``(N, M, D)``: for query ``i``, ``M`` images of the same content in other styles.
    """
    if negatives.ndim != 3:
        raise ValueError(f"paired_info_nce: negatives must be (N, M, D), got {tuple(negatives.shape)}")
    return info_nce(query, positive, negatives, temperature)


def dcl(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Decoupled contrastive loss (Yeh et al. 2022): NT-Xent with the positive removed from the denominator.

    ``l_i = -s_ij/tau + log sum_{k not in {i, j}} exp(s_ik/tau)`` over the ``2N`` views, averaged.
    """
    _check_pair(z1, z2, "dcl")
    z = _n(torch.cat([z1, z2]))
    n = z1.shape[0]
    idx = torch.arange(2 * n, device=z.device)
    partner = (idx + n) % (2 * n)
    sim = z @ z.T / temperature
    pos = sim[idx, partner]
    mask = torch.ones_like(sim, dtype=torch.bool)
    mask[idx, idx] = False
    mask[idx, partner] = False
    neg = torch.logsumexp(sim.masked_fill(~mask, float("-inf")), dim=1)
    return (neg - pos).mean()


def mochi_info_nce(
    query: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.07,
    n_hard: int = 1024,
    s: int = 0,
    s_prime: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """InfoNCE with MoCHi hard-negative mixing (Kalantidis et al. 2020).

    Per query ``q``: take the ``n_hard`` negatives most similar to ``q``; add ``s`` synthetic negatives
    ``normalise(a n_i + (1 - a) n_j)``, ``a ~ U(0, 1)``, and ``s_prime`` synthetic negatives
    ``normalise(b q + (1 - b) n_j)``, ``b ~ U(0, 0.5)``, with ``n_i, n_j`` drawn from the hardest ones.
    Synthetic points are detached (no gradient flows through them), as in MoCHi. With ``s = s_prime = 0``
    this is exactly :func:`info_nce` with the shared ``negatives``.

    Args:
        query, positive: ``(N, D)``; negatives: ``(M, D)`` (a queue or the rest of the batch).
        generator: the source of the mixing coefficients and indices (pass one for reproducibility).
    """
    _check_pair(query, positive, "mochi_info_nce")
    if negatives.ndim != 2 or negatives.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"mochi_info_nce: negatives must be (M, {query.shape[-1]}), got {tuple(negatives.shape)}"
        )
    q, p, neg = _n(query), _n(positive), _n(negatives)
    logits = [(q * p).sum(-1, keepdim=True), q @ neg.T]
    if s > 0 or s_prime > 0:
        with torch.no_grad():
            n, device = q.shape[0], q.device
            k = max(1, min(int(n_hard), neg.shape[0]))
            hardest = (q @ neg.T).topk(k, dim=1).indices  # (N, k)
            hard = neg[hardest]  # (N, k, D)

            def pick(count: int) -> torch.Tensor:
                idx = torch.randint(0, k, (n, count), generator=generator).to(device)
                return torch.gather(hard, 1, idx.unsqueeze(-1).expand(-1, -1, hard.shape[-1]))

            synthetic = []
            if s > 0:
                a = torch.rand(n, s, 1, generator=generator).to(device, q.dtype)
                synthetic.append(_n(a * pick(s) + (1 - a) * pick(s)))
            if s_prime > 0:
                b = 0.5 * torch.rand(n, s_prime, 1, generator=generator).to(device, q.dtype)
                synthetic.append(_n(b * q.detach().unsqueeze(1) + (1 - b) * pick(s_prime)))
            synthetic_keys = torch.cat(synthetic, dim=1)
        logits.append(torch.einsum("nd,nmd->nm", q, synthetic_keys))
    logits_t = torch.cat(logits, dim=1) / temperature
    return F.cross_entropy(logits_t, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def cwcl(
    a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor, temperature: float = 0.07, symmetric: bool = True
) -> torch.Tensor:
    """Continuously weighted contrastive loss (Srinivasa et al. 2023): soft positives weighted by similarity.

    ``l_i = -(1 / sum_j w_ij) sum_j w_ij log softmax_j(s(a_i, b_j)/tau)`` with ``w`` in ``[0, 1]`` (e.g. the
    cosine similarity of style labels, ``w_ii = 1``); ``w = I`` gives CLIP's InfoNCE. ``symmetric`` averages
    the ``a -> b`` and ``b -> a`` directions (using ``w.T`` for the latter).

    Args:
        a, b: ``(N, D)``; weights: ``(N, N)`` non-negative, every row with a positive sum.
    """
    _check_pair(a, b, "cwcl")
    n = a.shape[0]
    if weights.shape != (n, n) or bool((weights < 0).any()):
        raise ValueError(
            f"cwcl: weights must be a non-negative ({n}, {n}) matrix, got {tuple(weights.shape)}"
        )
    w = weights.to(a.dtype)
    logits = _n(a) @ _n(b).T / temperature

    def direction(lg: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:
        return (-(ww * F.log_softmax(lg, dim=1)).sum(1) / ww.sum(1).clamp_min(1e-12)).mean()

    loss = direction(logits, w)
    return 0.5 * (loss + direction(logits.T, w.T)) if symmetric else loss


def alignment_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Wang & Isola's alignment ``E ||f(x) - f(y)||_2^alpha`` over positive pairs (rows), on normalised rows."""
    _check_pair(x, y, "alignment_loss")
    return (_n(x) - _n(y)).norm(dim=1).pow(alpha).mean()


def uniformity_loss(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola's uniformity ``log E_{i<j} exp(-t ||f(x_i) - f(x_j)||_2^2)`` on normalised rows."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"uniformity_loss: expected (N >= 2, D), got {tuple(x.shape)}")
    return torch.pdist(_n(x), p=2).pow(2).mul(-t).exp().mean().log()
