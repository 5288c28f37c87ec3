"""EASE against a numpy oracle of the closed form, a hand-solved case, blocks and ties."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from features.errors import NotFittedError
from models.ease import CatalogueTooLarge, Ease, EaseConfig, ndcg_at_k, select_reg, top_n_rows


def oracle_b(x: np.ndarray, reg: float) -> np.ndarray:
    """B = I - P diagMat(1 / diag(P)), P = (X^T X + reg I)^-1, then diag(B) = 0 (Steck 2019)."""
    p = np.linalg.inv(x.T @ x + reg * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def random_binary(rng: np.random.Generator, users: int = 60, items: int = 25) -> np.ndarray:
    return (rng.random((users, items)) < 0.25).astype(np.float64)


@pytest.mark.parametrize("solver", ["primal", "dual", "auto"])
@pytest.mark.parametrize("shape", [(60, 25), (15, 40)])  # more users than items, and fewer
@pytest.mark.parametrize("reg", [0.5, 10.0, 500.0])
def test_weights_equal_numpy_closed_form(rng: np.random.Generator, reg: float,
                                         shape: tuple[int, int], solver: str) -> None:
    x = random_binary(rng, *shape)
    model = Ease(EaseConfig(reg=reg, dtype="float64", solver=solver)).fit(sp.csr_matrix(x))
    assert model.weights is not None
    np.testing.assert_allclose(model.weights, oracle_b(x, reg), rtol=1e-10, atol=1e-12)
    assert np.all(np.diag(model.weights) == 0.0)


def test_values_are_binarised_and_float32_close(rng: np.random.Generator) -> None:
    x = random_binary(rng)
    counts = x * rng.integers(1, 9, size=x.shape)  # play counts: EASE only sees the pattern
    f32 = Ease(EaseConfig(reg=5.0)).fit(sp.csr_matrix(counts))
    assert f32.weights is not None and f32.weights.dtype == np.float32
    np.testing.assert_allclose(f32.weights, oracle_b(x, 5.0), rtol=1e-5, atol=1e-6)


def test_dual_solver_writes_float32_weights_close_to_the_oracle(rng: np.random.Generator
                                                                ) -> None:
    x = random_binary(rng, users=15, items=40)
    for block in (1, 7, 2_000_000):  # row blocks of B: one row, a ragged split, everything
        model = Ease(EaseConfig(reg=3.0, solver="dual", block_elements=block * 40)).fit(
            sp.csr_matrix(x))
        assert model.weights is not None and model.weights.dtype == np.float32
        np.testing.assert_allclose(model.weights, oracle_b(x, 3.0), rtol=1e-5, atol=1e-6)
        assert np.all(np.diag(model.weights) == 0.0)


def test_known_answer_two_items() -> None:
    # Item 0 held by 3 users, item 1 by 2, together by 1. With two items the closed form is
    # B_01 = G_01 / (G_00 + reg) and B_10 = G_01 / (G_11 + reg): 1/4 and 1/3 for reg = 1.
    x = sp.csr_matrix(np.array([[1, 1], [1, 0], [1, 0], [0, 1]], dtype=np.float64))
    model = Ease(EaseConfig(reg=1.0, dtype="float64")).fit(x)
    np.testing.assert_allclose(model.weights, [[0.0, 0.25], [1 / 3, 0.0]], atol=1e-12)
    items, scores = model.recommend(sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 1.0]])), n=1)
    np.testing.assert_array_equal(items, [[1], [0]])
    np.testing.assert_allclose(scores, [[0.25], [1 / 3]])


def test_recommend_matches_dense_oracle_and_excludes_seen(rng: np.random.Generator) -> None:
    x = random_binary(rng)
    model = Ease(EaseConfig(reg=2.0, dtype="float64")).fit(sp.csr_matrix(x))
    items, scores = model.recommend(sp.csr_matrix(x), n=7)
    dense = x @ oracle_b(x, 2.0)  # (users, items)
    dense[x > 0] = -np.inf
    want = np.argsort(-dense, axis=1, kind="stable")[:, :7]  # stable: ties to lower index
    np.testing.assert_array_equal(items, want)
    np.testing.assert_allclose(scores, np.take_along_axis(dense, want, axis=1), rtol=1e-10)
    assert not np.any(x[np.arange(x.shape[0])[:, None], items] > 0)


@pytest.mark.parametrize("block_elements", [1, 25 * 3, 25 * 7])  # 1, 3 and 7 users per block
def test_blocks_equal_unblocked(rng: np.random.Generator, block_elements: int) -> None:
    x = sp.csr_matrix(random_binary(rng))
    one = Ease(EaseConfig(reg=3.0, block_elements=10**9)).fit(x)
    many = Ease(EaseConfig(reg=3.0, block_elements=block_elements)).fit(x)
    for exclude in (True, False):
        a, sa = one.recommend(x, n=10, exclude_seen=exclude)
        b, sb = many.recommend(x, n=10, exclude_seen=exclude)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sa, sb)
    pairs = rng.integers(0, 25, size=(x.shape[0], 4))
    np.testing.assert_array_equal(one.score_pairs(x, pairs), many.score_pairs(x, pairs))


def test_ties_go_to_lower_item_index_and_short_lists_pad() -> None:
    # Every item alike: all unseen scores tie, so the lowest indices come first.
    x = sp.csr_matrix(np.ones((4, 6)) - np.eye(4, 6))
    model = Ease(EaseConfig(reg=1.0, dtype="float64")).fit(x)
    cold = sp.csr_matrix((2, 6))  # no history: every score 0
    items, scores = model.recommend(cold, n=3)
    np.testing.assert_array_equal(items, [[0, 1, 2], [0, 1, 2]])
    # A user who has seen 5 of 6 items gets one item, then -1 / -inf padding.
    seen = sp.csr_matrix(np.array([[1, 1, 0, 1, 1, 1]], dtype=np.float64))
    items, scores = model.recommend(seen, n=3)
    np.testing.assert_array_equal(items, [[2, -1, -1]])
    assert np.isfinite(scores[0, 0]) and np.all(np.isneginf(scores[0, 1:]))


def test_top_n_rows_ties_against_stable_sort(rng: np.random.Generator) -> None:
    scores = rng.integers(0, 4, size=(200, 30)).astype(np.float64)  # many ties
    for n in (1, 5, 29, 30):
        want = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        np.testing.assert_array_equal(top_n_rows(scores, n), want)


def test_score_pairs_rectangular_and_long_form(rng: np.random.Generator) -> None:
    x = random_binary(rng)
    model = Ease(EaseConfig(reg=4.0, dtype="float64", block_elements=50)).fit(sp.csr_matrix(x))
    dense = x @ oracle_b(x, 4.0)
    idx = rng.integers(0, 25, size=(x.shape[0], 5))
    np.testing.assert_allclose(model.score_pairs(sp.csr_matrix(x), idx),
                               np.take_along_axis(dense, idx, axis=1), rtol=1e-10, atol=1e-12)
    rows = rng.integers(0, x.shape[0], size=40)
    cols = rng.integers(0, 25, size=40)
    cols[3] = -1  # a missing item gives NaN
    got = model.score_pairs(sp.csr_matrix(x), cols, rows=rows)
    np.testing.assert_allclose(np.delete(got, 3), np.delete(dense[rows, cols], 3), rtol=1e-10,
                               atol=1e-12)
    assert np.isnan(got[3])


def test_not_fitted_and_bad_arguments() -> None:
    model = Ease()
    x = sp.csr_matrix(np.eye(3))
    with pytest.raises(NotFittedError):
        model.recommend(x, n=2)
    with pytest.raises(NotFittedError):
        model.score_pairs(x, np.zeros((3, 1), dtype=np.int64))
    model.fit(x)
    with pytest.raises(ValueError, match="fitted on 3 items"):
        model.recommend(sp.csr_matrix(np.eye(4)), n=2)
    with pytest.raises(ValueError, match="n must be"):
        model.recommend(x, n=0)


def test_catalogue_above_max_items_is_refused() -> None:
    model = Ease(EaseConfig(max_items=5))
    assert model.allows(5) and not model.allows(6)
    with pytest.raises(CatalogueTooLarge, match="max_items"):
        model.fit(sp.csr_matrix(np.ones((2, 6))))


def test_fit_is_deterministic(rng: np.random.Generator) -> None:
    x = sp.csr_matrix(random_binary(rng))
    a = Ease(EaseConfig(reg=7.0)).fit(x).recommend(x, n=5)
    b = Ease(EaseConfig(reg=7.0)).fit(x).recommend(x, n=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_ndcg_at_k_matches_the_protocol_oracle() -> None:
    # Row 0: hits at ranks 1 and 3 of 2 held out; row 1: 1 hit at rank 2 of 3 held out, one
    # empty slot; row 2: nothing held out (NaN).
    items = np.array([[0, 1, 2, 3], [4, 0, -1, 1], [0, 1, 2, 3]])
    holdout = sp.csr_matrix(np.array([[1, 0, 1, 0, 0], [1, 1, 0, 1, 0], [0, 0, 0, 0, 0]]))
    got = ndcg_at_k(items, holdout, k=4)
    d = 1 / np.log2(np.arange(2, 6))
    np.testing.assert_allclose(got[:2], [(d[0] + d[2]) / (d[0] + d[1]),
                                         (d[1] + d[3]) / d[:3].sum()])
    assert np.isnan(got[2])


def test_select_reg_returns_the_best_of_the_grid(rng: np.random.Generator) -> None:
    # Two taste groups; every user's holdout is one more (random) item of their group. Random
    # order would give NDCG@10 ~ 0.2 (1 relevant among ~21 unseen items).
    n = 40
    group = np.arange(n) % 2
    like = (group[:, None] == (np.arange(30) % 2)[None, :]) & (rng.random((n, 30)) < 0.6)
    hold = np.zeros_like(like)
    for u in range(n):
        liked = np.flatnonzero(like[u])
        pick = rng.choice(liked)
        hold[u, pick], like[u, pick] = True, False
    best, scores = select_reg(sp.csr_matrix(like.astype(float)), sp.csr_matrix(hold.astype(float)),
                              [1.0, 10.0, 1e5])
    assert set(scores) == {1.0, 10.0, 1e5} and best == max(scores, key=lambda r: (scores[r], -r))
    assert scores[best] > 0.3
