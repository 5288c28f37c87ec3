"""The compiled per-row top-n equals a lexsort oracle, ties and non-finite scores included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from features.topn import dot_top, top_n


def oracle(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, position: np.ndarray,
           n: int) -> tuple[np.ndarray, ...]:
    ok = np.isfinite(scores)
    rows, cols, scores = rows[ok], cols[ok], scores[ok]
    order = np.lexsort((position[cols], -scores, rows))
    rows, cols, scores = rows[order], cols[order], scores[order]
    rank = np.zeros(len(rows), np.int64)
    for t in range(len(rows)):
        rank[t] = rank[t - 1] + 1 if t and rows[t] == rows[t - 1] else 1
    keep = rank <= n
    return rows[keep], cols[keep], scores[keep], rank[keep]


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_rows=st.integers(1, 12), n_items=st.integers(1, 30),
       density=st.floats(0.0, 1.0), n=st.integers(1, 8))
def test_top_n_equals_the_lexsort_oracle(seed: int, n_rows: int, n_items: int, density: float,
                                         n: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((n_rows, n_items)) < density
    rows, cols = (a.astype(np.int64) for a in np.nonzero(mask))
    perm = rng.permutation(len(rows))  # any input order
    rows, cols = rows[perm], cols[perm]
    scores = rng.integers(0, 4, len(rows)).astype(np.float64)  # many ties
    scores[rng.random(len(rows)) < 0.1] = np.nan
    scores[rng.random(len(rows)) < 0.05] = -np.inf
    position = rng.permutation(n_items)
    got = top_n(rows, cols, scores, position, n)
    want = oracle(rows, cols, scores, position, n)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_empty_input() -> None:
    empty = np.zeros(0, np.int64)
    out = top_n(empty, empty, np.zeros(0), np.arange(3), 5)
    assert all(len(a) == 0 for a in out)


def exact_scores(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """float64 dot products summed in factor order, elementwise (no BLAS reordering)."""
    acc = np.zeros((len(users), len(items)))
    for t in range(users.shape[1]):
        acc = acc + users[:, t, None].astype(np.float64) * items[None, :, t].astype(np.float64)
    return acc


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), b=st.integers(1, 9), n_items=st.integers(1, 60),
       f=st.integers(1, 16), n=st.integers(1, 70), levels=st.sampled_from([0, 3]))
def test_dot_top_is_the_exact_top_n(seed: int, b: int, n_items: int, f: int, n: int,
                                    levels: int) -> None:
    # Oracle: every unseen pair scored exactly, lexsorted by (row, -score, position).
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((b, f)).astype(np.float32)
    items = rng.standard_normal((n_items, f)).astype(np.float32)
    if levels:  # coarse factors: many exact ties, broken by popularity position
        users, items = np.round(users * levels) / levels, np.round(items * levels) / levels
    seen = rng.random((b, n_items)) < 0.3
    scores = users @ items.T
    scores[seen] = -np.inf
    q_max = np.linalg.norm(items.astype(np.float64), axis=1).max()
    bound = 2.0 * f * 2.0**-24 * q_max * np.linalg.norm(users.astype(np.float64), axis=1)
    position = rng.permutation(n_items)
    got = dot_top(scores, bound, users, items, position, n)
    rows, cols = (a.astype(np.int64) for a in np.nonzero(~seen))
    want = oracle(rows, cols, exact_scores(users, items)[rows, cols], position, n)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
