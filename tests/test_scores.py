"""OOD scores: classifier scores against numpy, NegLabel against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synood_kit.scores import (
    energy,
    energy_score,
    grouped_id_probability,
    max_logit_score,
    mcm_score,
    msp_score,
    neglabel_group_permutation,
    neglabel_score,
)


def _np_softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _np_logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=1))


def _np_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(13, 7, generator=torch.Generator().manual_seed(0)) * 3


# ---------------------------------------------------------------- classifier scores


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_msp_is_max_softmax_probability(logits, temperature):
    expected = _np_softmax(logits.double().numpy() / temperature).max(axis=1)
    got = msp_score(logits, temperature)
    assert got.shape == (13,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert torch.all(got > 0) and torch.all(got <= 1)


def test_max_logit_is_row_maximum(logits):
    np.testing.assert_array_equal(max_logit_score(logits).numpy(), logits.numpy().max(axis=1))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_energy_is_minus_t_logsumexp_of_logits_over_t(logits, temperature):
    expected = -temperature * _np_logsumexp(logits.double().numpy() / temperature)
    np.testing.assert_allclose(energy(logits, temperature).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(energy_score(logits, temperature).numpy(), -expected, rtol=1e-5)


def test_energy_score_is_higher_for_confident_id_like_logits():
    confident = torch.tensor([[10.0, 0.0, 0.0]])  # one class clearly wins: ID-like
    flat = torch.tensor([[0.0, 0.0, 0.0]])  # no class wins: OOD-like
    assert energy_score(confident) > energy_score(flat)
    # Energy keeps its physics sign: low energy = in-distribution.
    assert energy(confident) < energy(flat)


def test_energy_is_stable_for_large_logits():
    big = torch.tensor([[1000.0, 999.0], [-1000.0, -1001.0]])
    out = energy(big)
    assert torch.isfinite(out).all()
    expected = -_np_logsumexp(big.double().numpy())
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_classifier_scores_accept_low_precision_and_return_float32(logits, dtype):
    low = logits.to(dtype)
    for fn in (msp_score, max_logit_score, energy_score):
        got = fn(low)
        assert got.dtype == torch.float32
        # Computed in float32 from the rounded inputs, so equal to the float32 run on those inputs.
        torch.testing.assert_close(got, fn(low.float()))


def test_classifier_scores_reject_bad_input(logits):
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        msp_score(logits[0])
    with pytest.raises(TypeError, match="torch.Tensor"):
        energy_score(logits.numpy())
    for bad_t in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            msp_score(logits, bad_t)
        with pytest.raises(ValueError, match="temperature must be > 0"):
            energy(logits, bad_t)


# ---------------------------------------------------------------- MCM


@pytest.mark.parametrize("temperature", [1.0, 0.01])
def test_mcm_is_max_softmax_of_cosine_over_tau(temperature):
    rng = np.random.default_rng(1)
    img = rng.normal(size=(9, 6)) * 4  # unnormalised on purpose: MCM normalises
    txt = rng.normal(size=(5, 6))
    cos = _np_normalize(img) @ _np_normalize(txt).T
    expected = _np_softmax(cos / temperature).max(axis=1)
    got = mcm_score(torch.tensor(img, dtype=torch.float32), torch.tensor(txt, dtype=torch.float32), temperature)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.all(got >= 1 / 5 - 1e-7) and torch.all(got <= 1)


def test_mcm_batching_does_not_change_scores():
    g = torch.Generator().manual_seed(2)
    img, txt = torch.randn(37, 8, generator=g), torch.randn(6, 8, generator=g)
    torch.testing.assert_close(mcm_score(img, txt, batch_size=5), mcm_score(img, txt, batch_size=4096))


# ---------------------------------------------------------------- NegLabel, by hand
#
# Unit vectors in R^3 with known cosines to the images x0 = e0 and x1 = e1:
#   ID labels:  t0 = e0, t1 = e1
#   negatives:  n0 = (0.6, 0.8, 0), n1 = e2, n2 = -e0, n3 = (0.8, 0, 0.6), n4 = e0 (a copy of t0)
# Cosines (rows: image, columns: label), read off the coordinates:
COS_ID = {0: [1.0, 0.0], 1: [0.0, 1.0]}
COS_NEG = {0: [0.6, 0.0, -1.0, 0.8, 1.0], 1: [0.8, 0.0, 0.0, 0.0, 0.0]}
TAU = 0.5  # logits = cos / 0.5 = 2 * cos, so that every exp below is of a small number

ID_FEATS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
NEG_FEATS = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.8, 0.0, 0.6], [1.0, 0.0, 0.0]])
# Scaled copies of e0 and e1: the score must normalise its inputs.
IMAGES = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0]])


def _hand_neglabel(image: int, negatives: list[list[int]]) -> float:
    """Mean over groups of sum(exp ID logits) / (sum(exp ID logits) + sum(exp group logits))."""
    s_id = sum(math.exp(c / TAU) for c in COS_ID[image])
    probs = [s_id / (s_id + sum(math.exp(COS_NEG[image][j] / TAU) for j in group)) for group in negatives]
    return sum(probs) / len(probs)


def test_neglabel_ungrouped_matches_hand_computation():
    neg = NEG_FEATS[:4]
    got = neglabel_score(IMAGES, ID_FEATS, neg, temperature=TAU, n_groups=None)
    # Image 0: s_id = e^2 + e^0; negatives e^1.2 + e^0 + e^-2 + e^1.6.
    e = math.exp
    image0 = (e(2) + 1) / (e(2) + 1 + e(1.2) + 1 + e(-2) + e(1.6))
    assert got[0].item() == pytest.approx(image0, rel=1e-6)
    assert got[0].item() == pytest.approx(_hand_neglabel(0, [[0, 1, 2, 3]]), rel=1e-6)
    assert got[1].item() == pytest.approx(_hand_neglabel(1, [[0, 1, 2, 3]]), rel=1e-6)
    assert got.dtype == torch.float32
    # One group is the ungrouped score.
    torch.testing.assert_close(got, neglabel_score(IMAGES, ID_FEATS, neg, temperature=TAU, n_groups=1))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_neglabel_grouped_matches_hand_computation(seed):
    neg = NEG_FEATS[:4]
    groups = neglabel_group_permutation(4, 2, seed).tolist()
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3]
    got = neglabel_score(IMAGES, ID_FEATS, neg, temperature=TAU, n_groups=2, seed=seed)
    for image in (0, 1):
        assert got[image].item() == pytest.approx(_hand_neglabel(image, groups), rel=1e-6)
    # Grouping matters: the mean over groups is not the ungrouped score.
    assert got[0].item() != pytest.approx(_hand_neglabel(0, [[0, 1, 2, 3]]), rel=1e-3)


def test_neglabel_grouped_drops_the_last_negatives_then_permutes():
    # 5 negatives in 2 groups of 2: the official grouping drops the last one (index 4) before the shuffle
    for seed in range(12):
        groups = neglabel_group_permutation(5, 2, seed).tolist()
        assert len(groups) == 2 and all(len(g) == 2 for g in groups)
        assert sorted(i for g in groups for i in g) == [0, 1, 2, 3]
        got = neglabel_score(IMAGES, ID_FEATS, NEG_FEATS, temperature=TAU, n_groups=2, seed=seed)
        for image in (0, 1):
            assert got[image].item() == pytest.approx(_hand_neglabel(image, groups), rel=1e-6)


def _official_neglabel(image_feats, id_feats, neg_feats, tau, n_groups, seed):
    """NegLabel's grouped score written out literally, in float64 numpy: cosine logits over the saved order, drop the
    last M % G negatives, permute the rest with the seeded generator, split into G contiguous groups, softmax over
    [ID labels, one group] per group, the ID mass averaged over groups."""
    import numpy as np

    def unit(x):
        x = x.double().numpy()
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    x, ids, negs = unit(image_feats), unit(id_feats), unit(neg_feats)
    cos_id, cos_neg = x @ ids.T, x @ negs.T
    m = negs.shape[0]
    kept = cos_neg[:, : m - m % n_groups]
    order = torch.randperm(kept.shape[1], generator=torch.Generator().manual_seed(seed)).numpy()
    groups = kept[:, order].reshape(len(x), n_groups, -1)
    scores = np.zeros(len(x))
    for g in range(n_groups):
        logits = np.concatenate([cos_id, groups[:, g, :]], axis=1) / tau
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        scores += p[:, : cos_id.shape[1]].sum(axis=1)
    return scores / n_groups


@pytest.mark.parametrize(("m", "seed"), [(1005, 0), (1005, 1), (1099, 2), (1000, 3), (1050, 7)])
def test_neglabel_equals_the_official_grouping_when_m_is_not_a_multiple_of_g(m, seed):
    g = torch.Generator().manual_seed(seed)
    images, ids, negs = (
        torch.randn(300, 32, generator=g),
        torch.randn(50, 32, generator=g),
        torch.randn(m, 32, generator=g),
    )
    got = neglabel_score(images, ids, negs, temperature=0.01, n_groups=100, seed=seed).double().numpy()
    want = _official_neglabel(images, ids, negs, 0.01, 100, seed)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
    if m % 100:  # dropping random negatives instead (what shuffling before dropping does) changes the scores
        shuffled = torch.randperm(m, generator=torch.Generator().manual_seed(seed))
        keep = shuffled[: m - m % 100]
        old = neglabel_score(images, ids, negs[keep], temperature=0.01, n_groups=100, seed=seed)
        assert np.abs(old.double().numpy() - want).max() > 1e-4


def test_grouped_id_probability_splits_contiguous_columns():
    id_logits = torch.tensor([[1.0, 0.0]])
    neg_logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    s_id = math.exp(1) + 1
    expected = (s_id / (s_id + math.exp(2) + math.exp(-1)) + s_id / (s_id + math.exp(0.5) + 1)) / 2
    assert grouped_id_probability(id_logits, neg_logits, 2).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="3 equal groups"):
        grouped_id_probability(id_logits, neg_logits, 3)


# ---------------------------------------------------------------- NegLabel, properties


@pytest.fixture
def clip_like_features():
    g = torch.Generator().manual_seed(3)
    return (
        torch.randn(41, 16, generator=g),
        torch.randn(10, 16, generator=g),
        torch.randn(103, 16, generator=g),
    )


def test_group_permutation_is_reproducible_by_seed():
    a = neglabel_group_permutation(100, 10, seed=0)
    assert a.shape == (10, 10) and a.dtype == torch.int64
    assert torch.equal(a, neglabel_group_permutation(100, 10, seed=0))
    assert not torch.equal(a, neglabel_group_permutation(100, 10, seed=1))
    assert sorted(a.reshape(-1).tolist()) == list(range(100))


def test_neglabel_score_is_reproducible_by_seed(clip_like_features):
    img, ids, neg = clip_like_features
    a = neglabel_score(img, ids, neg, temperature=0.1, n_groups=10, seed=0)
    torch.testing.assert_close(a, neglabel_score(img, ids, neg, temperature=0.1, n_groups=10, seed=0))
    b = neglabel_score(img, ids, neg, temperature=0.1, n_groups=10, seed=1)
    assert not torch.allclose(a, b)  # 103 = 10 x 10 + 3: a different seed drops and groups differently


def test_neglabel_batching_does_not_change_scores(clip_like_features):
    img, ids, neg = clip_like_features
    for n_groups in (None, 7):
        small = neglabel_score(img, ids, neg, temperature=0.05, n_groups=n_groups, batch_size=3)
        large = neglabel_score(img, ids, neg, temperature=0.05, n_groups=n_groups, batch_size=4096)
        torch.testing.assert_close(small, large, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_neglabel_handles_low_precision_features(clip_like_features, dtype):
    img, ids, neg = (t.to(dtype) for t in clip_like_features)
    got = neglabel_score(img, ids, neg, n_groups=5)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    # The score upcasts before normalising, so it equals the float32 score of the rounded inputs.
    torch.testing.assert_close(got, neglabel_score(img.float(), ids.float(), neg.float(), n_groups=5))
    # Mixed precision (half image features, float32 text features) works too.
    mixed = neglabel_score(img, ids.float(), neg.float(), n_groups=5)
    torch.testing.assert_close(mixed, got)


def test_neglabel_scores_lie_in_unit_interval(clip_like_features):
    img, ids, neg = clip_like_features
    for temperature in (0.01, 1.0):
        for n_groups in (None, 10):
            s = neglabel_score(img, ids, neg, temperature=temperature, n_groups=n_groups)
            assert s.shape == (41,)
            assert torch.all(s >= 0) and torch.all(s <= 1)


def test_neglabel_is_higher_for_images_near_id_labels():
    ids = torch.eye(4)[:2]  # ID labels e0, e1
    neg = torch.eye(4)[2:]  # negatives e2, e3
    near_id, near_neg = torch.tensor([[1.0, 0.1, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0, 0.1]])
    assert neglabel_score(near_id, ids, neg, n_groups=None) > neglabel_score(near_neg, ids, neg, n_groups=None)


def test_neglabel_rejects_bad_arguments(clip_like_features):
    img, ids, neg = clip_like_features
    with pytest.raises(ValueError, match=r"D=16.*D=15"):
        neglabel_score(img, ids[:, :15], neg)
    with pytest.raises(ValueError, match=r"neg_text_features has D=12"):
        neglabel_score(img, ids, neg[:, :12])
    for bad_t in (0.0, -0.01):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            neglabel_score(img, ids, neg, temperature=bad_t)
    # more groups than negatives: capped at one negative per group (a short list, e.g. a capped corpus)
    torch.testing.assert_close(neglabel_score(img, ids, neg, n_groups=104), neglabel_score(img, ids, neg, n_groups=103))
    with pytest.raises(ValueError, match=r"n_groups must be in \[1, n_negatives=103\], got 104"):
        neglabel_group_permutation(103, 104)
    for bad_groups in (0, -2):
        with pytest.raises(ValueError, match="n_groups"):
            neglabel_score(img, ids, neg, n_groups=bad_groups)
    with pytest.raises(ValueError, match="batch_size"):
        neglabel_score(img, ids, neg, batch_size=0)
    with pytest.raises(ValueError, match=r"shape \(rows, D\)"):
        neglabel_score(img[0], ids, neg)


@pytest.mark.parametrize("n_groups", [None, 100])
def test_an_empty_negative_list_is_an_error_not_a_score_of_one(n_groups):
    with pytest.raises(ValueError, match="neg_text_features is empty"):
        neglabel_score(torch.randn(3, 8), torch.randn(2, 8), torch.zeros(0, 8), n_groups=n_groups)


# ---------------------------------------------------------------- NegLabel, the in-place path (issue 17, point 5)


@pytest.mark.parametrize("n_groups", [None, 1, 7, 100])
def test_neglabel_in_place_equals_the_autograd_path_and_its_gradient_flows(n_groups):
    g = torch.Generator().manual_seed(11)
    img, ids, neg = torch.randn(57, 24, generator=g), torch.randn(9, 24, generator=g), torch.randn(703, 24, generator=g)
    fast = neglabel_score(img, ids, neg, n_groups=n_groups)  # no input needs a gradient: the in-place path
    leaf = img.clone().requires_grad_(True)
    slow = neglabel_score(leaf, ids, neg, n_groups=n_groups)  # autograd: logits + grouped_id_probability
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-6, atol=1e-7)
    (grad,) = torch.autograd.grad(slow.sum(), leaf)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():  # no autograd: the in-place path even for inputs that require a gradient
        assert torch.equal(neglabel_score(leaf, ids, neg, n_groups=n_groups), fast)


def test_neglabel_chunking_by_bytes_does_not_change_scores(clip_like_features, monkeypatch):
    import synood_kit.scores as scores

    img, ids, neg = clip_like_features
    whole = neglabel_score(img, ids, neg, n_groups=10, batch_size=4096)
    monkeypatch.setitem(scores.CHUNK_BYTES, "cpu", 1)  # the smallest chunk: 64 rows
    torch.testing.assert_close(neglabel_score(torch.cat([img] * 3), ids, neg, n_groups=10), torch.cat([whole] * 3))
    for batch_size in (1, 5, 41):
        torch.testing.assert_close(neglabel_score(img, ids, neg, n_groups=10, batch_size=batch_size), whole)
    assert neglabel_score(img[:0], ids, neg).shape == (0,)
