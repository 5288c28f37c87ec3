"""Pearson neighbourhoods over co-rated entries, computed blockwise with sparse algebra."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field


class PearsonConfig(BaseModel):
    """Neighbourhood settings for one side (users or items)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(100, ge=1)
    """Neighbours kept per row (the strongest); bounds memory and the candidate fan-out."""
    threshold: float = Field(0.0, ge=-1.0, lt=1.0)
    """alpha: only neighbours with weight > threshold are kept (the lecture notes' U(u0))."""
    min_support: int = Field(2, ge=1)
    """Least number of co-rated entries |I_uv| for a similarity to exist."""
    shrinkage: float = Field(0.0, ge=0.0)
    """lambda in w * n / (n + lambda), damping weights with little support; 0 is the formula."""
    block_elements: int = Field(1_000_000, ge=1)
    """Rows per block are block_elements // n_rows, so a block holds at most this many
    co-rated pairs: memory ~ 100 bytes * block_elements (six aligned sums plus the top-k slab)."""


@dataclass(frozen=True)
class Neighbours:
    """Top-k neighbours per row in COO form, sorted by (row, weight desc, neighbour asc)."""

    row: np.ndarray  # (m,) int32
    neighbour: np.ndarray  # (m,) int32
    weight: np.ndarray  # (m,) float64, shrunk when shrinkage > 0
    support: np.ndarray  # (m,) int32, |co-rated set|


def pearson_blocks(
    ratings: sp.csr_matrix, config: PearsonConfig
) -> Neighbours:
    """Pearson weights between the rows of `ratings`, means taken over co-rated columns only.

    For rows u, v with co-rated columns I_uv (n = |I_uv|):
        w_uv = sum_I (r_u - m_u)(r_v - m_v) / sqrt(sum_I (r_u - m_u)^2 * sum_I (r_v - m_v)^2)
    with m_u, m_v the means over I_uv. Expanding the sums gives everything from six co-rated
    sums, each one sparse product per block of rows (B = the 0/1 pattern, X = the values):
        n = B B^T, S_u = X B^T, Q_u = X^2 B^T, S_v = B X^T, Q_v = B (X^2)^T, P = X X^T
    cov = P - S_u S_v / n, var_u = Q_u - S_u^2 / n, var_v = Q_v - S_v^2 / n.

    X is each row shifted by its own mean and then by one global constant so every value is
    >= 1: Pearson over I_uv is invariant to per-row shifts, the centring limits cancellation,
    and strictly positive values make every product's sparsity pattern exactly that of B B^T
    (no sum can cancel to an implicit zero). So the six results are aligned 1-D arrays over
    the co-rated pairs only: nothing of size n_rows^2 is ever dense, and the work is the
    co-rating count, not the matrix size. Memory is bounded by the block's co-rated pairs.
    """
    ratings = sp.csr_matrix(ratings, dtype=np.float64)
    ratings.sum_duplicates()
    ratings.sort_indices()
    n_rows = ratings.shape[0]
    pattern = ratings.copy()
    pattern.data = np.ones_like(pattern.data)
    counts = np.diff(ratings.indptr)
    row_mean = np.divide(
        np.asarray(ratings.sum(axis=1)).ravel(), counts, out=np.zeros(n_rows), where=counts > 0
    )
    x = ratings.copy()
    x.data = x.data - np.repeat(row_mean, counts)
    x.data += 1.0 - x.data.min(initial=0.0)  # all values >= 1 (see above)
    x2 = x.multiply(x).tocsr()
    x2.sort_indices()
    bt, xt, x2t = pattern.T.tocsr(), x.T.tocsr(), x2.T.tocsr()
    # Rows per block from the densest rows' fan-out: co-rated pairs per row <= n_rows.
    block = max(1, config.block_elements // max(n_rows, 1))
    out: list[tuple[np.ndarray, ...]] = []
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        b_blk, x_blk, x2_blk = pattern[start:stop], x[start:stop], x2[start:stop]
        n = b_blk @ bt  # (b, n_rows) sparse: one entry per co-rated pair
        parts = [x_blk @ bt, x2_blk @ bt, b_blk @ xt, b_blk @ x2t, x_blk @ xt]
        for part in parts:
            if not (np.array_equal(part.indptr, n.indptr)
                    and np.array_equal(part.indices, n.indices)):
                raise AssertionError("co-rated sums lost alignment; values must be positive")
        out.append(_top_k(start, n, *(part.data for part in parts), config))
    if not out:
        empty = np.zeros(0, dtype=np.int32)
        return Neighbours(empty, empty, np.zeros(0), empty)
    rows, nbrs, weights, support = (np.concatenate(parts) for parts in zip(*out, strict=True))
    return Neighbours(rows, nbrs, weights, support)


def _top_k(
    start: int, pairs: sp.csr_matrix, s_u: np.ndarray, q_u: np.ndarray, s_v: np.ndarray,
    q_v: np.ndarray, p: np.ndarray, config: PearsonConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weights of one block's co-rated pairs (1-D arrays aligned with `pairs`), cut to top-k.

    Returns (row, neighbour, weight, support) sorted by row, weight desc, neighbour asc.
    """
    n = pairs.data
    rows = np.repeat(np.arange(start, start + pairs.shape[0]), np.diff(pairs.indptr))
    cols = pairs.indices
    keep = (n >= config.min_support) & (rows != cols)
    rows, cols, n = rows[keep], cols[keep], n[keep]
    s_u, q_u, s_v, q_v, p = s_u[keep], q_u[keep], s_v[keep], q_v[keep], p[keep]
    var_u = q_u - s_u * s_u / n
    var_v = q_v - s_v * s_v / n
    # Zero variance up to rounding, relative to the sum of squares it was computed from.
    tol = 1e-9
    ok = (var_u > tol * q_u) & (var_v > tol * q_v)
    w = (p[ok] - s_u[ok] * s_v[ok] / n[ok]) / np.sqrt(var_u[ok] * var_v[ok])
    rows, cols, n = rows[ok], cols[ok], n[ok]
    np.clip(w, -1.0, 1.0, out=w)
    if config.shrinkage > 0:
        w *= n / (n + config.shrinkage)
    above = w > config.threshold
    rows, cols, n, w = rows[above], cols[above], n[above], w[above]
    b, n_rows = pairs.shape
    if len(w) > 0.2 * b * n_rows:
        # Densely co-rated block: a partition over a (b, n_rows) slab beats sorting the pairs.
        slab = np.full((b, n_rows), -np.inf)
        slab[rows - start, cols] = w
        support = np.zeros((b, n_rows), dtype=np.int32)
        support[rows - start, cols] = n
        pick = top_k_indices(slab, config.k)  # (b, k)
        top_w = np.take_along_axis(slab, pick, axis=1)
        order = np.lexsort((pick, -top_w), axis=1)
        pick, top_w = np.take_along_axis(pick, order, 1), np.take_along_axis(top_w, order, 1)
        ok = np.isfinite(top_w)
        r = np.broadcast_to(np.arange(b)[:, None], pick.shape)[ok]
        return ((r + start).astype(np.int32), pick[ok].astype(np.int32), top_w[ok],
                support[r, pick[ok]])
    order = np.lexsort((cols, -w, rows))  # by row, then weight desc, then neighbour asc
    rows, cols, n, w = rows[order], cols[order], n[order], w[order]
    first = np.searchsorted(rows, rows, side="left")  # index of each row's first entry
    top = (np.arange(len(rows)) - first) < config.k
    return (rows[top].astype(np.int32), cols[top].astype(np.int32), w[top],
            n[top].astype(np.int32))


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest scores per row, ties going to the lower index.

    Plain argpartition picks an arbitrary member of a tie at the cut; here every entry above
    the k-th value is taken, then the lowest-index entries equal to it. Result is unordered.
    """
    b, n = scores.shape
    k = min(k, n)
    if k == n:
        return np.broadcast_to(np.arange(n), (b, n)).copy()
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # (b, 1)
    above = scores > kth
    need = k - above.sum(axis=1, keepdims=True)
    equal = scores == kth
    chosen = above | (equal & (np.cumsum(equal, axis=1) <= need))
    # Every row has exactly k chosen entries; nonzero walks rows in order.
    return np.nonzero(chosen)[1].reshape(b, k)
