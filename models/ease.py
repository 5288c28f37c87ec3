"""EASE (Steck 2019): a closed-form item-item linear model, scored for users in bounded blocks."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Literal, Self

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from features.errors import NotFittedError

log = logging.getLogger(__name__)


class EaseConfig(BaseModel):
    """Hyperparameters and resource limits of EASE."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reg: float = Field(200.0, gt=0.0)
    """lambda on the Gram diagonal, G + lambda I. The best value differs widely per data set
    (validation NDCG@10, bench/quality.py: ML-1M users 1-2999 best at 3000, MovieLens
    latest-small and Last.fm at 60); 200 has the smallest worst-case loss against each data
    set's best (-4.6%, mean -3.1%). Prefer `select_reg` on the night's own validation split."""
    max_items: int = Field(10_000, ge=1)
    """Largest catalogue EASE accepts: the primal solver holds one dense items x items float64
    matrix, then B in `dtype`; the dual solver (fewer users than items) writes B in `dtype`
    directly, by row blocks (10,000 items: 0.8 GB in float64, 0.4 GB in float32; 20,000:
    3.2 / 1.6 GB), and the nightly fits it once per
    history, so a larger catalogue raises `CatalogueTooLarge` and the nightly skips the source
    with a warning (an 18,000-item catalogue took minutes per fit on one thread)."""
    dtype: Literal["float32", "float64"] = "float32"
    """Storage and scoring precision of B. The inverse is always computed in float64; float32
    halves memory and scoring time, and its scores match float64 to ~1e-6 relative (ties
    that differ only by rounding may then order differently from a float64 run)."""
    block_elements: int = Field(2_000_000, ge=1)
    """Users per scoring block are max(1, block_elements // n_items): the dense slab of one
    block's scores never exceeds this many elements."""
    threads: int = Field(1, ge=1)
    """BLAS threads for the inversion and scoring (pinned while EASE runs)."""
    solver: Literal["auto", "primal", "dual"] = "auto"
    """How P = (X^T X + lambda I)^-1 is computed: `primal` inverts the items x items Gram
    (~n_items^3 flops); `dual` uses the Woodbury identity through the users x users matrix
    X X^T + lambda I (~n_users^3 + 2 nnz n_items flops), far cheaper when users are fewer
    than items. `auto` picks the cheaper by that count. Both give the same P (tested)."""


class CatalogueTooLarge(ValueError):
    """The catalogue has more items than `EaseConfig.max_items`; EASE is skipped or refused."""


class Ease:
    """EASE: B = argmin ||X - XB||^2 + lambda ||B||^2 subject to diag(B) = 0.

    Closed form (Steck 2019, eq. 8): P = (X^T X + lambda I)^-1, B = I - P diagMat(1 / diag(P)),
    i.e. B_ij = -P_ij / P_jj off the diagonal and 0 on it. A user's scores are x_u B, so item
    j scores sum over the user's items i of B_ij. X is binary (every interaction a positive).
    """

    def __init__(self, config: EaseConfig | None = None) -> None:
        self.config = config or EaseConfig()
        self.weights: np.ndarray | None = None  # B: (n_items, n_items), config.dtype, diag 0

    @property
    def n_items(self) -> int:
        """Catalogue size the model was fitted on."""
        return self._b().shape[0]

    def allows(self, n_items: int) -> bool:
        """Whether a catalogue of `n_items` is within `max_items` (so `fit` will not refuse)."""
        return n_items <= self.config.max_items

    def fit(self, user_items: sp.spmatrix | sp.sparray) -> Self:
        """Fit on a users x items interaction matrix; stored values are binarised."""
        x = _binary(user_items, np.float64)
        n_items = x.shape[1]
        if not self.allows(n_items):
            raise CatalogueTooLarge(
                f"EASE needs a dense {n_items:,} x {n_items:,} inverse but max_items is "
                f"{self.config.max_items:,}; raise ease.max_items (peak memory 12-28 * "
                "n_items^2 bytes) or leave EASE out for this catalogue")
        reg = self.config.reg
        with threadpool_limits(self.config.threads, "blas"):
            if self._use_dual(x):
                # Straight into B in its dtype, by row blocks: no float64 items x items copy.
                self.weights = _dual_weights(x, reg, np.dtype(self.config.dtype),
                                             self.config.block_elements)
                log.info("EASE fitted: %d items, lambda %g (dual)", n_items, reg)
                return self
            # Primal: one dense float64 Gram, inverted in place.
            gram = (x.T @ x).toarray()  # (n_items, n_items) float64, co-occurrences
            gram[np.diag_indices_from(gram)] += reg
            p = _spd_inverse_inplace(gram)  # the same memory
            p /= -np.diag(p)[None, :]  # B_ij = -P_ij / P_jj
            np.fill_diagonal(p, 0.0)
        self.weights = p.astype(self.config.dtype, copy=False)
        log.info("EASE fitted: %d items, lambda %g", n_items, self.config.reg)
        return self

    def _use_dual(self, x: sp.csr_matrix) -> bool:
        if self.config.solver != "auto":
            return self.config.solver == "dual"
        n_users, n_items = x.shape
        return float(n_users) ** 3 + 2.0 * x.nnz * n_items < float(n_items) ** 3

    def recommend(
        self, user_rows: sp.spmatrix | sp.sparray, n: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`n` items per row of `user_rows` (each a user's history), best first.

        Ties go to the lower item index. With `exclude_seen` a user's own items are never
        returned; slots that cannot be filled hold item -1 and score -inf. Returns
        (item_idx (b, n) int64, scores (b, n) of config.dtype).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        b = self._b()
        x = self._rows(user_rows)
        n_rows = x.shape[0]
        items = np.full((n_rows, n), -1, dtype=np.int64)
        scores = np.full((n_rows, n), -np.inf, dtype=b.dtype)
        k = min(n, b.shape[0])
        with threadpool_limits(self.config.threads, "blas"):
            for blk in self._blocks(n_rows):
                s = np.asarray(x[blk] @ b)  # (block, n_items) dense slab, bounded by block
                if exclude_seen:
                    _mask_seen(s, x[blk])
                idx = top_n_rows(s, k)  # (block, k)
                val = np.take_along_axis(s, idx, axis=1)
                filled = np.isfinite(val)  # seen (masked) items never fill a slot
                items[blk, :k] = np.where(filled, idx, -1)
                scores[blk, :k] = np.where(filled, val, -np.inf)
        return items, scores

    def score_pairs(
        self, user_rows: sp.spmatrix | sp.sparray, item_idx: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """EASE scores x_u B[:, j] of given (user, item) pairs, e.g. as a ranker feature.

        Rectangular form: `item_idx` (b, k) names k items for each row of `user_rows`;
        returns (b, k). Long form: with `rows` (m,) the pairs are (rows[t], item_idx[t]),
        item_idx (m,); returns (m,). Seen items are scored like any other. Entries of
        item_idx equal to -1 give NaN.
        """
        b = self._b()
        x = self._rows(user_rows)
        item_idx = np.asarray(item_idx, dtype=np.int64)
        if rows is None:
            if item_idx.ndim != 2 or item_idx.shape[0] != x.shape[0]:
                raise ValueError(
                    f"item_idx must be (n_rows={x.shape[0]}, k), got {item_idx.shape}; pass "
                    "rows= for (user, item) pairs in long form")
            rows = np.repeat(np.arange(x.shape[0]), item_idx.shape[1])
            return self.score_pairs(x, item_idx.ravel(), rows).reshape(item_idx.shape)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape != item_idx.shape or rows.ndim != 1:
            raise ValueError(f"rows {rows.shape} and item_idx {item_idx.shape} must be equal 1-D")
        if item_idx.size and (item_idx.max() >= b.shape[0] or item_idx.min() < -1):
            raise ValueError(f"item_idx must lie in [-1, {b.shape[0]}), the fitted catalogue")
        out = np.full(rows.shape, np.nan, dtype=b.dtype)  # (m,)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        with threadpool_limits(self.config.threads, "blas"):
            for blk in self._blocks(x.shape[0]):
                lo, hi = np.searchsorted(sorted_rows, [blk.start, blk.stop])
                if lo == hi:
                    continue
                sel = order[lo:hi]  # pairs whose user is in this block
                s = np.asarray(x[blk] @ b)  # (block, n_items)
                valid = item_idx[sel] >= 0
                out[sel[valid]] = s[rows[sel[valid]] - blk.start, item_idx[sel[valid]]]
        return out

    def _b(self) -> np.ndarray:
        if self.weights is None:
            raise NotFittedError(type(self).__name__)
        return self.weights

    def _rows(self, user_rows: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
        b = self._b()
        if user_rows.shape[1] != b.shape[0]:
            raise ValueError(
                f"user_rows has {user_rows.shape[1]} columns but EASE was fitted on "
                f"{b.shape[0]} items; build the rows with the fitted item vocabulary")
        return _binary(user_rows, b.dtype)

    def _blocks(self, n_rows: int) -> Iterator[slice]:
        step = max(1, self.config.block_elements // max(self._b().shape[0], 1))
        for start in range(0, n_rows, step):
            yield slice(start, min(start + step, n_rows))


def ndcg_at_k(items: np.ndarray, holdout: sp.spmatrix | sp.sparray, k: int = 10) -> np.ndarray:
    """Binary NDCG@k per row of ranked `items` (b, >= k; -1 = empty) against `holdout` rows.

    The product's protocol (pipelines.evaluate): log2 discount, ideal over min(|holdout|, k),
    empty slots are misses. Rows without held-out items give NaN. Returns (b,) float64.
    """
    h = _binary(holdout, np.float64)
    top = items[:, :k]  # (b, k)
    rows = np.repeat(np.arange(top.shape[0]), top.shape[1]).reshape(top.shape)
    valid = top >= 0
    hits = np.zeros(top.shape)
    hits[valid] = np.asarray(h[rows[valid], top[valid]]).ravel()
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])  # ideal DCG of m relevant, m = 0..k
    m = np.minimum(np.diff(h.indptr), k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m > 0, (hits @ discount) / ideal[m], np.nan)


def select_reg(
    history: sp.spmatrix | sp.sparray, holdout: sp.spmatrix | sp.sparray,
    grid: Sequence[float], config: EaseConfig | None = None, k: int = 10,
) -> tuple[float, dict[float, float]]:
    """Choose lambda on a validation split: fit on `history`, mean NDCG@k on `holdout`.

    `history` and `holdout` are users x items on the same vocabularies (the holdout: each
    user's held-out interactions, e.g. a time cut-off of the night's data, never the test
    part). Only users with held-out items count. Returns (best lambda, ties to the smaller;
    {lambda: mean NDCG@k}). The optimum differs widely between data sets (validation, see
    bench/quality.py: ML-1M 3000, MovieLens latest-small 60, Last.fm 60), so a nightly job
    should choose it on its own data rather than rely on the default.
    """
    base = config or EaseConfig()
    x = _binary(history, np.float64)
    users = np.flatnonzero(np.diff(_binary(holdout, np.float64).indptr))
    scores: dict[float, float] = {}
    for reg in sorted(grid):
        model = Ease(base.model_copy(update={"reg": float(reg)})).fit(x)
        items, _ = model.recommend(x[users], k)
        scores[float(reg)] = float(np.mean(ndcg_at_k(items, sp.csr_matrix(holdout)[users], k)))
        log.info("EASE lambda %g: validation NDCG@%d %.4f", reg, k, scores[float(reg)])
    best = max(scores, key=lambda r: (scores[r], -r))
    return best, scores


def _binary(matrix: sp.spmatrix | sp.sparray, dtype: np.dtype | type) -> sp.csr_matrix:
    """CSR copy with every stored nonzero set to 1 (explicit zeros dropped)."""
    x = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    x.eliminate_zeros()
    x.sum_duplicates()
    x.data[:] = 1.0
    return x.astype(dtype)


def _spd_inverse_inplace(a: np.ndarray, block: int = 1024) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix via Cholesky (LAPACK potrf + potri).

    `a` (m, m) float64 C-order is overwritten: its transpose is the same symmetric matrix in
    Fortran order, which LAPACK factors and inverts in place, so no m x m copy is made.
    """
    f = a.T  # F-contiguous view of the same memory
    chol, info = lapack.dpotrf(f, lower=False, overwrite_a=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"Gram matrix not positive definite (potrf info {info})")
    inv, info = lapack.dpotri(chol, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"inversion failed (potri info {info})")
    # potri fills the upper triangle only: mirror it into the lower one, one row block at a
    # time so the temporaries stay (block, m).
    m = inv.shape[0]
    for start in range(0, m, block):
        rows = slice(start, min(start + block, m))
        inv[rows, :start] = inv[:start, rows].T
        diag = inv[rows, rows]
        inv[rows, rows] = np.triu(diag) + np.triu(diag, 1).T
    return inv


def _dual_weights(x: sp.csr_matrix, reg: float, dtype: np.dtype, block_elements: int
                  ) -> np.ndarray:
    """B from the Woodbury form, row block by row block, stored in `dtype`; x (users, items).

    With G = X^T K X and K = (X X^T + reg I)^-1, P = (I - G) / reg, so off the diagonal
    B_ij = -P_ij / P_jj = G_ij / (1 - G_jj). diag(G) comes from X^T K and X alone; each block
    of G's rows is one sparse-dense product. Only a users x users matrix is inverted and the
    float64 items x items P never exists whole. Cancellation in 1 - G_jj is bounded by
    reg / (reg + n_j) per item (n_j its interaction count), harmless in float64 for the reg
    values EASE uses (>= 1).
    """
    n_items = x.shape[1]
    k = (x @ x.T).toarray()  # (users, users) float64
    k[np.diag_indices_from(k)] += reg
    k = _spd_inverse_inplace(k)  # K = (X X^T + reg I)^-1
    xt = x.T.tocsr()  # (items, users)
    xtk = np.asarray(xt @ k)  # (items, users) dense, X^T K
    del k
    g_diag = np.asarray(xt.multiply(xtk).sum(axis=1)).ravel()  # G_jj = sum_u (X^T K)_ju X_uj
    scale = 1.0 / (1.0 - g_diag)  # (items,) = 1 / (reg P_jj)
    out = np.empty((n_items, n_items), dtype=dtype)
    step = max(1, block_elements // max(n_items, 1))
    for start in range(0, n_items, step):
        blk = slice(start, min(start + step, n_items))
        g = np.asarray(xt @ xtk[blk].T).T  # (b, items) rows of G = X^T K X
        out[blk] = g * scale[None, :]
    np.fill_diagonal(out, 0.0)
    return out


def _mask_seen(scores: np.ndarray, x: sp.csr_matrix) -> None:
    """Set scores of each row's own items to -inf, in place; scores (b, n_items)."""
    r = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    scores[r, x.indices] = -np.inf


def top_n_rows(scores: np.ndarray, n: int) -> np.ndarray:
    """Column indices of each row's `n` largest entries, best first, ties to the lower index.

    argpartition finds a top-n set in O(items) per row; it may break a tie at the n-th value
    arbitrarily, so rows whose boundary value has tied entries outside the set are redone by a
    stable sort (rare for real scores; cold rows of all-equal scores take this path).
    scores (b, m), n <= m; returns (b, n) int64.
    """
    b, m = scores.shape
    if n >= m:
        part = np.broadcast_to(np.arange(m), (b, m)).copy()
    else:
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]  # (b, n), unordered
        thr = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)  # (b, 1)
        tied_all = (scores == thr).sum(axis=1)
        tied_in = (np.take_along_axis(scores, part, axis=1) == thr).sum(axis=1)
        redo = np.flatnonzero(tied_all != tied_in)
        if redo.size:
            part[redo] = np.argsort(-scores[redo], axis=1, kind="stable")[:, :n]
    val = np.take_along_axis(scores, part, axis=1)
    # Order the set: score descending, then index ascending (lexsort: last key is primary).
    order = np.lexsort((part, -val), axis=1)
    return np.take_along_axis(part, order, axis=1).astype(np.int64)
