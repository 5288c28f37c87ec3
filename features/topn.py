"""Per-row top-n of COO proposals in the candidates' order: score desc, then popularity position."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _top_n(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, position: np.ndarray,
           n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n_rows = 0
    for r in rows:
        n_rows = max(n_rows, r + 1)
    starts = np.zeros(n_rows + 1, np.int64)  # counting sort by row: O(entries)
    for t in range(len(rows)):
        if np.isfinite(scores[t]):
            starts[rows[t] + 1] += 1
    kept = 0
    for r in range(n_rows):
        kept += min(starts[r + 1], n)
        starts[r + 1] += starts[r]
    fill = starts[:-1].copy()
    by_row = np.empty(starts[n_rows], np.int64)
    for t in range(len(rows)):
        if np.isfinite(scores[t]):
            by_row[fill[rows[t]]] = t
            fill[rows[t]] += 1
    out_rows = np.empty(kept, np.int64)
    out_cols = np.empty(kept, np.int64)
    out_scores = np.empty(kept, np.float64)
    out_ranks = np.empty(kept, np.int32)
    o = 0
    for r in range(n_rows):
        idx = by_row[starts[r]:starts[r + 1]]
        if len(idx) == 0:
            continue
        if len(idx) > n:  # the n best all score >= the n-th best score: sort only those
            s = scores[idx]
            idx = idx[s >= -np.partition(-s, n - 1)[n - 1]]
        # Score desc, ties by popularity position asc: a stable sort by position, then score.
        idx = idx[np.argsort(position[cols[idx]], kind="mergesort")]
        idx = idx[np.argsort(-scores[idx], kind="mergesort")]
        for k in range(min(len(idx), n)):
            t = idx[k]
            out_rows[o] = r
            out_cols[o] = cols[t]
            out_scores[o] = scores[t]
            out_ranks[o] = k + 1
            o += 1
    return out_rows, out_cols, out_scores, out_ranks


@njit(cache=True, nogil=True)
def _dot_top(scores: np.ndarray, kths: np.ndarray, bound: np.ndarray, users: np.ndarray,
             items: np.ndarray, position: np.ndarray, n: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    b, n_items = scores.shape
    f = users.shape[1]
    k = min(n, n_items)
    out_rows = np.empty(b * k, np.int64)
    out_cols = np.empty(b * k, np.int64)
    out_scores = np.empty(b * k, np.float64)
    out_ranks = np.empty(b * k, np.int32)
    cols = np.empty(n_items, np.int64)
    exact = np.empty(n_items, np.float64)
    o = 0
    for r in range(b):  # one row at a time, while it is in cache
        row = scores[r]
        kth = kths[r]
        slack = np.float32(bound[r] + 1e-30) if np.isfinite(kth) else np.float32(0.0)
        cut = kth - slack
        m = 0
        for j in range(n_items):
            s = row[j]
            if s >= cut and np.isfinite(s):
                acc = 0.0
                for t in range(f):
                    acc += np.float64(users[r, t]) * np.float64(items[j, t])
                cols[m], exact[m] = j, acc
                m += 1
        idx = np.argsort(-exact[:m])  # exact score desc; equal scores are put in order below
        q = 0
        while q < min(m, n):  # ties by popularity position asc (as `top_n`), one run at a time
            end = q + 1
            while end < m and exact[idx[end]] == exact[idx[q]]:
                end += 1
            if end - q > 1:
                run = idx[q:end]
                idx[q:end] = run[np.argsort(position[cols[run]])]
            q = end
        for q in range(min(m, n)):
            out_rows[o], out_cols[o] = r, cols[idx[q]]
            out_scores[o], out_ranks[o] = exact[idx[q]], q + 1
            o += 1
    return out_rows[:o], out_cols[:o], out_scores[:o], out_ranks[:o]


def dot_top(scores: np.ndarray, bound: np.ndarray, users: np.ndarray, items: np.ndarray,
            position: np.ndarray, n: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's n best items by exact dot product, from float32 scores that may be off.

    scores (b, n_items) float32 = users @ items.T with excluded items at -inf; bound (b,) how
    far below the row's k-th float32 score an entry may be and still belong to the exact top
    k (twice the float32 error of a score). Those entries are rescored exactly (float64,
    summed in factor order, so the same for a pair in any block) and the n best by exact
    score are kept, ties to the lower `position[col]`: (rows, cols, exact scores, ranks
    1..n), sorted by row, rank.
    """
    scores = np.ascontiguousarray(scores, np.float32)
    k = min(int(n), scores.shape[1])
    # The k-th largest per row (numpy's introselect beats a compiled per-row partition).
    kths = np.partition(scores, scores.shape[1] - k, axis=1)[:, scores.shape[1] - k]
    return _dot_top(scores, np.ascontiguousarray(kths), bound.astype(np.float64),
                    np.ascontiguousarray(users, np.float32),
                    np.ascontiguousarray(items, np.float32), position.astype(np.int64), int(n))


def top_n(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, position: np.ndarray, n: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's n best finite entries as (rows, cols, scores, ranks 1..n), sorted by row, rank.

    `rows` are non-negative and (row, col) pairs unique; ties in score go to the lower
    `position[col]` (the catalogue's popularity order), which makes the order total.
    """
    return _top_n(rows.astype(np.int64), cols.astype(np.int64), scores.astype(np.float64),
                  position.astype(np.int64), int(n))
