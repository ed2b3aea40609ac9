"""Each loss against a plain formula on random tensors, and against its known limits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stylekit.extractors import losses as L

TAU = 0.2


def _z(n: int = 6, d: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _n(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_nt_xent_matches_simclr_formula():
    z1, z2 = _z(5, seed=1), _z(5, seed=2)
    z = _n(torch.cat([z1, z2]))
    n = 5
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        num = math.exp(float(z[i] @ z[j]) / TAU)
        den = sum(math.exp(float(z[i] @ z[k]) / TAU) for k in range(2 * n) if k != i)
        total += -math.log(num / den)
    assert float(L.nt_xent(z1, z2, TAU)) == pytest.approx(total / (2 * n), rel=1e-5)


def test_symmetric_info_nce_is_clip_loss():
    a, b = _z(7, seed=3), _z(7, seed=4)
    logits = _n(a) @ _n(b).T / TAU
    labels = torch.arange(7)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    assert float(L.symmetric_info_nce(a, b, TAU)) == pytest.approx(float(expected), rel=1e-5)


def _supcon_plain(z: torch.Tensor, weights: torch.Tensor) -> float:
    z = _n(z)
    n = z.shape[0]
    losses = []
    for i in range(n):
        den = sum(math.exp(float(z[i] @ z[a]) / TAU) for a in range(n) if a != i)
        w = [float(weights[i, j]) if j != i else 0.0 for j in range(n)]
        if sum(w) == 0:
            continue
        terms = sum(w[j] * (float(z[i] @ z[j]) / TAU - math.log(den)) for j in range(n) if j != i)
        losses.append(-terms / sum(w))
    return sum(losses) / len(losses)


def test_supcon_matches_formula_and_weighted_supcon_with_one_hot_labels():
    z = _z(8, seed=5)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])  # label 3 has no positive: skipped
    eq = (labels[:, None] == labels[None, :]).double()
    plain = _supcon_plain(z, eq)
    assert float(L.supcon(z, labels, TAU)) == pytest.approx(plain, rel=1e-5)
    assert float(L.weighted_supcon(z, labels, TAU)) == pytest.approx(plain, rel=1e-6)
    one_hot = F.one_hot(labels).double()
    assert float(L.weighted_supcon(z, one_hot, TAU)) == pytest.approx(plain, rel=1e-6)


def test_weighted_multilabel_supcon_weights_positives_by_shared_tags():
    z = _z(6, seed=6)
    tags = torch.tensor(
        [[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 0, 0]],
        dtype=torch.float64,
    )
    weights = tags @ tags.T  # |labels_i & labels_j|
    assert float(L.weighted_supcon(z, tags, TAU)) == pytest.approx(_supcon_plain(z, weights), rel=1e-6)
    # CSD's HobbitLong convention scales by tau / base_temperature
    scaled = L.weighted_supcon(z, tags, TAU, base_temperature=1.0)
    assert float(scaled) == pytest.approx(TAU * _supcon_plain(z, weights), rel=1e-6)


def test_info_nce_unpaired_paired_and_in_batch():
    q, p, neg = _z(4, seed=7), _z(4, seed=8), _z(9, seed=9)
    qn, pn, nn_ = _n(q), _n(p), _n(neg)
    expected = 0.0
    for i in range(4):
        pos = math.exp(float(qn[i] @ pn[i]) / TAU)
        expected += -math.log(pos / (pos + sum(math.exp(float(qn[i] @ nn_[k]) / TAU) for k in range(9))))
    assert float(L.info_nce(q, p, neg, TAU)) == pytest.approx(expected / 4, rel=1e-6)
    # paired negatives (FontDiffuser SCR): the same negatives for every anchor give the unpaired loss
    shared = neg.unsqueeze(0).expand(4, -1, -1)
    assert float(L.paired_info_nce(q, p, shared, TAU)) == pytest.approx(expected / 4, rel=1e-6)
    # per-anchor negatives: anchor i only sees its own
    paired = _z(4 * 3, seed=10).view(4, 3, -1)
    manual = 0.0
    for i in range(4):
        pos = math.exp(float(qn[i] @ pn[i]) / TAU)
        negs = sum(math.exp(float(qn[i] @ _n(paired[i])[k]) / TAU) for k in range(3))
        manual += -math.log(pos / (pos + negs))
    assert float(L.paired_info_nce(q, p, paired, TAU)) == pytest.approx(manual / 4, rel=1e-6)
    # in-batch: the other positives are the negatives (CLIP's one-directional loss)
    logits = qn @ pn.T / TAU
    assert float(L.info_nce(q, p, None, TAU)) == pytest.approx(
        float(F.cross_entropy(logits, torch.arange(4)))
    )


def test_dcl_is_nt_xent_without_the_positive_in_the_denominator():
    z1, z2 = _z(5, seed=11), _z(5, seed=12)
    z = _n(torch.cat([z1, z2]))
    n = 5
    dcl_total = gap = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        pos = float(z[i] @ z[j]) / TAU
        neg = math.log(sum(math.exp(float(z[i] @ z[k]) / TAU) for k in range(2 * n) if k not in (i, j)))
        dcl_total += -pos + neg
        gap += math.log1p(math.exp(pos - neg))  # nt_xent_i - dcl_i
    dcl = float(L.dcl(z1, z2, TAU))
    assert dcl == pytest.approx(dcl_total / (2 * n), rel=1e-6)
    assert float(L.nt_xent(z1, z2, TAU)) - dcl == pytest.approx(gap / (2 * n), rel=1e-5)


def test_mochi_without_synthetic_negatives_is_its_base_loss():
    q, p, neg = _z(4, seed=13), _z(4, seed=14), _z(20, seed=15)
    base = L.info_nce(q, p, neg, TAU)
    assert float(L.mochi_info_nce(q, p, neg, TAU, n_hard=8, s=0, s_prime=0)) == pytest.approx(
        float(base), rel=1e-9
    )


def test_mochi_synthetic_negatives_formula_and_properties():
    q, p = _z(3, seed=16), _z(3, seed=17)
    one = _z(1, seed=18)
    neg = one.expand(5, -1)  # all negatives identical: every mix of them is that negative again
    qn, pn, nn_ = _n(q), _n(p), _n(one)[0]
    expected = 0.0
    for i in range(3):
        pos = math.exp(float(qn[i] @ pn[i]) / TAU)
        expected += -math.log(pos / (pos + (5 + 4) * math.exp(float(qn[i] @ nn_) / TAU)))
    got = L.mochi_info_nce(q, p, neg, TAU, n_hard=3, s=4, generator=torch.Generator().manual_seed(0))
    assert float(got) == pytest.approx(expected / 3, rel=1e-6)
    # more (non-trivial) negatives can only raise the loss; same generator -> same result; synthetic
    # points carry no gradient, so q's gradient comes only through the logits
    neg = _z(30, seed=19)
    base = L.info_nce(q, p, neg, TAU)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    mixed = L.mochi_info_nce(q, p, neg, TAU, n_hard=10, s=16, s_prime=8, generator=g())
    assert float(mixed) > float(base)
    assert float(mixed) == float(L.mochi_info_nce(q, p, neg, TAU, n_hard=10, s=16, s_prime=8, generator=g()))
    negr = neg.clone().requires_grad_(True)
    L.mochi_info_nce(q, p, negr, TAU, n_hard=10, s=16, generator=g()).backward()
    assert negr.grad is not None and torch.isfinite(negr.grad).all()


def test_cwcl_formula_and_identity_weights_give_clip_loss():
    a, b = _z(6, seed=20), _z(6, seed=21)
    assert float(L.cwcl(a, b, torch.eye(6, dtype=torch.float64), TAU)) == pytest.approx(
        float(L.symmetric_info_nce(a, b, TAU)), rel=1e-5
    )
    w = torch.rand(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits = _n(a) @ _n(b).T / TAU
    plain = 0.0
    for i in range(6):
        logp = logits[i] - torch.logsumexp(logits[i], 0)
        plain += float(-(w[i] * logp).sum() / w[i].sum())
    assert float(L.cwcl(a, b, w, TAU, symmetric=False)) == pytest.approx(plain / 6, rel=1e-6)
    with pytest.raises(ValueError, match="non-negative"):
        L.cwcl(a, b, -w, TAU)


def test_alignment_and_uniformity_formulas_and_limits():
    x, y = _z(10, seed=22), _z(10, seed=23)
    xn, yn = _n(x), _n(y)
    assert float(L.alignment_loss(x, y)) == pytest.approx(float(((xn - yn) ** 2).sum(1).mean()), rel=1e-9)
    assert float(L.alignment_loss(x, 3 * x)) == pytest.approx(0.0, abs=1e-12)  # scale-invariant: normalised
    d2 = [float(((xn[i] - xn[j]) ** 2).sum()) for i in range(10) for j in range(i + 1, 10)]
    expected = math.log(sum(math.exp(-2 * v) for v in d2) / len(d2))
    assert float(L.uniformity_loss(x)) == pytest.approx(expected, rel=1e-9)
    assert float(L.uniformity_loss(x[:1].expand(4, -1))) == pytest.approx(0.0, abs=1e-12)  # collapsed = worst


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5\) and \(3, 5\)"):
        L.nt_xent(_z(4), _z(3))
    with pytest.raises(ValueError, match="negatives"):
        L.paired_info_nce(_z(4), _z(4), _z(4))
    with pytest.raises(ValueError, match="labels"):
        L.weighted_supcon(_z(4), torch.zeros(3, 2))
