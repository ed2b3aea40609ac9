"""Measuring style with the project's trained style extractor.

- :func:`style_similarity` -- cosine similarity of style embeddings (images or precomputed embeddings).
- :func:`style_retrieval` -- retrieve ``database`` items for each query and score with both the standard
  average precision and CSD's ``mAP@k`` (mean over ranks ``1..k`` of precision@rank), recall@k and MRR.
- :func:`retrieval_metrics`, :func:`probe_accuracy`, :func:`pair_auc` -- the label-level tools used by
  ``benchmarks/extractor.py``.

The default extractor is the bundled one (``stylekit/assets/extractor``), loaded lazily on first use.
Raw cosine values are not calibrated across extractors (see the research notes): compare ranks or scores
from one extractor only.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["pair_auc", "probe_accuracy", "retrieval_metrics", "style_retrieval", "style_similarity"]


def _extractor(extractor: Any | None) -> Any:
    if extractor is not None:
        return extractor
    from stylekit.extractors import load_default

    return load_default()


def _as_embeddings(x: Any, extractor: Any | None, name: str) -> torch.Tensor:
    """Float ``(N, D)`` / ``(D,)`` arrays or tensors are embeddings (checked against ``extractor`` if given);
    anything else is embedded with the extractor."""
    if (isinstance(x, (list, tuple)) and not x) or (hasattr(x, "shape") and len(x.shape) and x.shape[0] == 0):
        raise ValueError(f"{name}: no images or embeddings (an empty batch)")
    is_float = isinstance(x, torch.Tensor) and x.is_floating_point()
    is_float = is_float or (isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating))
    if is_float and x.ndim in (1, 2):
        emb = torch.as_tensor(x).float()
        emb = emb.reshape(1, -1) if emb.ndim == 1 else emb
        if extractor is not None and emb.shape[-1] != extractor.embed_dim:
            raise ValueError(
                f"{name}: embeddings of shape {tuple(emb.shape)} do not match the extractor's embedding "
                f"shape (N, {extractor.embed_dim})"
            )
        return torch.nn.functional.normalize(emb, dim=-1)
    return _extractor(extractor).embed(x)


def style_similarity(a: Any, b: Any, extractor: Any | None = None) -> torch.Tensor:
    """Cosine similarity of style embeddings, pairwise by row.

    Args:
        a, b: images (anything :meth:`StyleExtractor.embed` accepts; one image or a batch) or embeddings
            ``(N, D)`` / ``(D,)``; ``b`` may have one row (compared with every row of ``a``). A 1-D or 2-D
            float array or tensor is always read as embeddings: give a grayscale image as ``(H, W, 3)``, a PIL
            image or a path.
        extractor: a :class:`~stylekit.extractors.StyleExtractor`; default: the bundled one.

    Returns:
        ``(N,)`` float tensor in ``[-1, 1]``.
    """
    ea, eb = _as_embeddings(a, extractor, "a"), _as_embeddings(b, extractor, "b")
    if ea.shape[-1] != eb.shape[-1]:
        raise ValueError(
            f"style_similarity: a {tuple(ea.shape)} and b {tuple(eb.shape)} have different dimensions"
        )
    if eb.shape[0] not in (1, ea.shape[0]) and ea.shape[0] != 1:
        raise ValueError(
            f"style_similarity: a has {ea.shape[0]} rows, b has {eb.shape[0]} (expected equal or 1)"
        )
    return (ea * eb).sum(-1)


def retrieval_metrics(
    similarity: torch.Tensor | np.ndarray,
    relevance: torch.Tensor | np.ndarray,
    ks: Sequence[int] = (1, 10, 100),
) -> dict[str, float]:
    """Retrieval scores from a query x database similarity matrix and a relevance matrix.

    Args:
        similarity: ``(Q, N)``, higher = more similar (ties broken by database order).
        relevance: ``(Q, N)`` bool, True where database item ``n`` is relevant to query ``q``.
        ks: cut-offs.

    Returns:
        ``map_at_k`` (CSD: mean over queries of the mean of precision@1..k -- a query with no relevant item in
        the top k scores 0), ``ap_at_k`` (standard truncated AP: sum of precision at relevant ranks <= k over
        ``min(k, R)``), ``recall_at_k`` (hit rate: at least one relevant item in the top k), ``precision_at_k``,
        ``mrr`` and ``map`` (standard AP over the full ranking, normalised by the number ``R`` of relevant
        items; queries with ``R = 0`` skipped), all in ``[0, 1]``.
    """
    sim = torch.as_tensor(np.asarray(similarity, dtype=np.float64))
    rel = torch.as_tensor(np.asarray(relevance, dtype=bool))
    if sim.shape != rel.shape or sim.ndim != 2:
        raise ValueError(
            f"similarity {tuple(sim.shape)} and relevance {tuple(rel.shape)} must be equal (Q, N)"
        )
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices
    hits = torch.gather(rel, 1, order).double()  # (Q, N) relevance in ranked order
    cum = hits.cumsum(1)
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float64)
    precision = cum / ranks
    n_rel = hits.sum(1)
    out: dict[str, float] = {}
    valid = n_rel > 0
    ap = (precision * hits).sum(1)[valid] / n_rel[valid]
    out["map"] = float(ap.mean()) if valid.any() else 0.0
    first = torch.where(hits.any(1), hits.argmax(1).double() + 1, torch.full_like(n_rel, float("inf")))
    out["mrr"] = float((1.0 / first).mean())
    for k in ks:
        kk = min(int(k), hits.shape[1])
        out[f"map_at_{k}"] = float(precision[:, :kk].mean(1).mean())
        denom = torch.minimum(n_rel, torch.tensor(float(kk))).clamp_min(1)
        out[f"ap_at_{k}"] = float(((precision[:, :kk] * hits[:, :kk]).sum(1) / denom).mean())
        out[f"recall_at_{k}"] = float((cum[:, kk - 1] > 0).double().mean())
        out[f"precision_at_{k}"] = float(precision[:, kk - 1].mean())
    return out


def style_retrieval(
    queries: Any,
    database: Any,
    query_labels: Sequence[Any] | np.ndarray | torch.Tensor,
    database_labels: Sequence[Any] | np.ndarray | torch.Tensor,
    ks: Sequence[int] = (1, 10, 100),
    extractor: Any | None = None,
    exclude_self: bool = False,
) -> dict[str, float]:
    """Style retrieval: rank ``database`` by style similarity to each query and score it.

    Args:
        queries, database: images (batches or lists, see :meth:`StyleExtractor.embed`) or ``(N, D)``
            embeddings.
        query_labels, database_labels: style label per item (ints/strings: relevant = equal; or ``(N, L)``
            multi-hot arrays: relevant = at least one shared tag, as CSD does with multi-label data).
        exclude_self: queries are also in the database at the same indices; never retrieve the item itself.

    Returns:
        :func:`retrieval_metrics` of the ranking (both CSD's ``map_at_k`` and standard ``map``/``ap_at_k``).
    """
    ks = tuple(ks)  # (a generator or an array too)
    if len(ks) == 0 or any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 for k in ks):
        raise ValueError(f"ks: expected integers >= 1, got {ks!r}")
    q = _as_embeddings(queries, extractor, "queries")
    d = _as_embeddings(database, extractor, "database")
    if q.shape[-1] != d.shape[-1]:
        raise ValueError(f"queries {tuple(q.shape)} and database {tuple(d.shape)} have different dimensions")
    ql, dl = np.asarray(query_labels), np.asarray(database_labels)
    if len(ql) != q.shape[0] or len(dl) != d.shape[0]:
        raise ValueError(
            f"labels: {len(ql)} query labels for {q.shape[0]} queries, {len(dl)} database labels for {d.shape[0]} items"
        )
    relevance = (ql.astype(float) @ dl.astype(float).T) > 0 if ql.ndim == 2 else ql[:, None] == dl[None, :]
    sim = (q @ d.T).double()
    if exclude_self:
        if q.shape[0] != d.shape[0]:
            raise ValueError("exclude_self needs queries and database of the same length")
        sim.fill_diagonal_(-float("inf"))
        relevance = relevance.copy()
        np.fill_diagonal(relevance, False)
    return retrieval_metrics(sim, relevance, ks)


def probe_accuracy(
    train_x: torch.Tensor | np.ndarray,
    train_y: torch.Tensor | np.ndarray,
    test_x: torch.Tensor | np.ndarray,
    test_y: torch.Tensor | np.ndarray,
    weight_decay: float = 1e-3,
    steps: int = 100,
) -> float:
    """Accuracy of a linear probe (multinomial logistic regression, L2-regularised, L-BFGS, deterministic).

    Features are standardised with the training set's mean and std. Used for content leakage (a content
    probe on the style embedding; lower is better, chance = majority-class rate) and per-factor probes.

    Returns:
        Test accuracy in ``[0, 1]``.
    """
    tx = torch.as_tensor(np.asarray(train_x, dtype=np.float32))
    vx = torch.as_tensor(np.asarray(test_x, dtype=np.float32))
    ty = torch.as_tensor(np.asarray(train_y)).long()
    vy = torch.as_tensor(np.asarray(test_y)).long()
    mean, std = tx.mean(0), tx.std(0).clamp_min(1e-6)
    tx, vx = (tx - mean) / std, (vx - mean) / std
    n_classes = int(max(ty.max(), vy.max())) + 1
    w = torch.zeros(tx.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tx @ w + b, ty) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((vx @ w + b).argmax(1) == vy).float().mean())


def pair_auc(positive_scores: torch.Tensor | np.ndarray, negative_scores: torch.Tensor | np.ndarray) -> float:
    """ROC AUC of separating positive from negative pair scores (ties count one half), in ``[0, 1]``."""
    pos = np.asarray(positive_scores, dtype=np.float64).ravel()
    neg = np.asarray(negative_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("pair_auc: need at least one positive and one negative score")
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(allv.size)
    sorted_v = allv[order]
    # average ranks for ties
    i = 0
    while i < allv.size:
        j = i
        while j + 1 < allv.size and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))
