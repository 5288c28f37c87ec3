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
def near_top(scores: np.ndarray, kth: np.ndarray, slack: np.ndarray, users: np.ndarray,
              items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries of each score row within `slack` of its k-th value, rescored exactly.

    scores (b, n_items) float32 with seen items at -inf; kth, slack (b,); users (b, f) and
    items (n_items, f) the factors. The exact score is the float64 dot product summed in
    factor order, the same for a pair whatever block it is computed in.
    """
    b, n_items = scores.shape
    count = 0
    for r in range(b):
        cut = kth[r] - slack[r]
        for j in range(n_items):
            s = scores[r, j]
            if s >= cut and np.isfinite(s):
                count += 1
    rows = np.empty(count, np.int64)
    cols = np.empty(count, np.int64)
    exact = np.empty(count, np.float64)
    o = 0
    f = users.shape[1]
    for r in range(b):
        cut = kth[r] - slack[r]
        for j in range(n_items):
            s = scores[r, j]
            if s >= cut and np.isfinite(s):
                acc = 0.0
                for t in range(f):
                    acc += np.float64(users[r, t]) * np.float64(items[j, t])
                rows[o], cols[o], exact[o] = r, j, acc
                o += 1
    return rows, cols, exact


def top_n(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, position: np.ndarray, n: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's n best finite entries as (rows, cols, scores, ranks 1..n), sorted by row, rank.

    `rows` are non-negative and (row, col) pairs unique; ties in score go to the lower
    `position[col]` (the catalogue's popularity order), which makes the order total.
    """
    return _top_n(rows.astype(np.int64), cols.astype(np.int64), scores.astype(np.float64),
                  position.astype(np.int64), int(n))
