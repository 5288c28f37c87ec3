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
    block_elements: int = Field(4_000_000, ge=1)
    """Rows per block are block_elements // n_rows: memory ~ 12 * 8 bytes * block_elements."""


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
    sums, i.e. three sparse products per block of rows:
        [B; X; X^2]_blk @ B^T -> n, S_u, Q_u;   B_blk @ [X; X^2]^T -> S_v, Q_v;   X_blk @ X^T -> P
    cov = P - S_u S_v / n, var_u = Q_u - S_u^2 / n, var_v = Q_v - S_v^2 / n.
    X is each row shifted by its overall mean: Pearson over I_uv is invariant to a per-row shift,
    and centring keeps the expanded sums free of cancellation. Only a (block x n_rows) slab is
    ever dense, so memory is bounded by `block_elements`, never n_rows^2.
    """
    ratings = sp.csr_matrix(ratings, dtype=np.float64)
    ratings.sum_duplicates()
    n_rows = ratings.shape[0]
    pattern = ratings.copy()
    pattern.data = np.ones_like(pattern.data)
    counts = np.diff(ratings.indptr)
    row_mean = np.divide(
        np.asarray(ratings.sum(axis=1)).ravel(), counts, out=np.zeros(n_rows), where=counts > 0
    )
    x = ratings.copy()
    x.data = x.data - np.repeat(row_mean, counts)
    x2 = x.multiply(x).tocsr()
    bt, xt, x2t = pattern.T.tocsr(), x.T.tocsr(), x2.T.tocsr()
    block = max(1, config.block_elements // max(n_rows, 1))
    out: list[tuple[np.ndarray, ...]] = []
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        b = stop - start
        left = sp.vstack([pattern[start:stop], x[start:stop], x2[start:stop]]).tocsr()
        first = (left @ bt).toarray()  # (3b, n_rows): n, S_u, Q_u
        n, s_u, q_u = first[:b], first[b:2 * b], first[2 * b:]
        s_v = (pattern[start:stop] @ xt).toarray()  # (b, n_rows)
        q_v = (pattern[start:stop] @ x2t).toarray()  # (b, n_rows)
        p = (x[start:stop] @ xt).toarray()  # (b, n_rows)
        out.append(_top_k(start, n, s_u, q_u, s_v, q_v, p, config))
    if not out:
        empty = np.zeros(0, dtype=np.int32)
        return Neighbours(empty, empty, np.zeros(0), empty)
    rows, nbrs, weights, support = (np.concatenate(parts) for parts in zip(*out, strict=True))
    return Neighbours(rows, nbrs, weights, support)


def _top_k(
    start: int, n: np.ndarray, s_u: np.ndarray, q_u: np.ndarray, s_v: np.ndarray,
    q_v: np.ndarray, p: np.ndarray, config: PearsonConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weights for one block (all arrays (b, n_rows)), filtered and cut to top-k per row."""
    b, n_rows = n.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        var_u = q_u - s_u * s_u / n
        var_v = q_v - s_v * s_v / n
        cov = p - s_u * s_v / n
        # Zero variance up to rounding: relative to the sum of squares it was computed from.
        tol = 1e-9
        ok = (n >= config.min_support) & (var_u > tol * q_u) & (var_v > tol * q_v)
        w = np.where(ok, cov / np.sqrt(var_u * var_v), -np.inf)
    w = np.clip(w, -1.0, 1.0, out=w, where=np.isfinite(w))
    w[np.arange(b), np.arange(start, start + b)] = -np.inf  # no self-similarity
    if config.shrinkage > 0:
        finite = np.isfinite(w)
        w[finite] *= n[finite] / (n[finite] + config.shrinkage)
    w[~(w > config.threshold)] = -np.inf
    part = top_k_indices(w, config.k)  # (b, k)
    top_w = np.take_along_axis(w, part, axis=1)
    # Order each row by weight desc, then neighbour index asc (deterministic ties).
    order = np.lexsort((part, -top_w), axis=1)
    part = np.take_along_axis(part, order, axis=1)
    top_w = np.take_along_axis(top_w, order, axis=1)
    keep = np.isfinite(top_w)
    rows = np.broadcast_to(np.arange(start, start + b)[:, None], part.shape)[keep]
    nbrs = part[keep]
    support = n[rows - start, nbrs]
    return (rows.astype(np.int32), nbrs.astype(np.int32), top_w[keep], support.astype(np.int32))


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
