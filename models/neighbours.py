"""Row-to-row neighbourhoods (Pearson over co-rated entries, cosine, Jaccard), compiled."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numba
import numpy as np
import scipy.sparse as sp
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic
from pydantic import BaseModel, ConfigDict, Field

from features.errors import DataError, DataWarning

# Kernel codes for `PearsonConfig.similarity`.
_PEARSON, _COSINE, _JACCARD = 0, 1, 2
_MODES = {"pearson": _PEARSON, "cosine": _COSINE, "jaccard": _JACCARD}
# A co-rated variance at or below this share of the co-rated sum of squares (both about the
# row's own mean) counts as zero: it is rounding, the values on the co-rated set are equal.
_ZERO_VARIANCE = 1e-9
# Weights this close to +-1 are +-1: a perfect correlation, off only by rounding, so that
# perfect neighbours tie exactly (and go to the lower index) and threshold -1 drops them all.
_UNIT = 1e-12


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
    similarity: Literal["pearson", "cosine", "jaccard"] = "pearson"
    """"pearson": the lecture notes' formula, means over the co-rated set I_uv. It is undefined
    when a row's weights are all equal (implicit feedback, or data without a weight column):
    use "cosine" (the raw weight vectors, absent entries 0, full-row norms) or "jaccard"
    (|I_uv| / |I_u or I_v| on co-occurrence) there. min_support, threshold, shrinkage, k and
    the tie-break apply to all three."""
    max_column_entries: int | None = Field(10_000, ge=2)
    """Most entries per column the similarities see (an item's raters for user neighbours, a
    user's items for item neighbours); a longer column keeps a fixed pseudo-random subset of
    this many (a hash of row and column). The pair work grows with the squared column lengths,
    so one item rated by half of a million users alone would be 10^11 pairs. None keeps every
    entry; 10,000 leaves the embedded data, ML-1M and the books-shaped set exact."""
    threads: int = Field(1, ge=1)
    """Threads of the compiled kernel (capped at the cores numba sees); the result does not
    depend on it. Each thread holds its own k-best buffers: n_rows * (48 * k + 50) bytes."""
    block_elements: int = Field(1_000_000, ge=1)
    """Unused: the compiled kernel needs no blocks (memory is O(n_rows * k) per thread).
    Accepted so that existing configuration files keep working."""


@dataclass(frozen=True)
class Neighbours:
    """Top-k neighbours per row in COO form, sorted by (row, weight desc, neighbour asc)."""

    row: np.ndarray  # (m,) int32
    neighbour: np.ndarray  # (m,) int32
    weight: np.ndarray  # (m,) float64, shrunk when shrinkage > 0
    support: np.ndarray  # (m,) int32, |co-rated set|


def pearson_blocks(ratings: sp.csr_matrix, config: PearsonConfig) -> Neighbours:
    """Top-k neighbours of every row of `ratings` (rows x columns; stored entries are rated).

    Pearson, for rows u, v with co-rated columns I_uv (n = |I_uv| >= min_support):
        w_uv = sum_I (r_u - m_u)(r_v - m_v) / sqrt(sum_I (r_u - m_u)^2 * sum_I (r_v - m_v)^2)
    with m_u, m_v the means over I_uv; no similarity where either side has zero variance on
    I_uv. Then w *= n / (n + shrinkage), only w > threshold is kept, and each row keeps its
    k largest weights, ties going to the lower neighbour index.

    The kernel walks an inverted index once: for row u and each of its columns j, every later
    row v (v > u) that rated j adds to six running sums of (u, v): n, Σx, Σy, Σx², Σy², Σxy,
    in float64 over the touched rows only. Then w_uv = w_vu is offered to both rows' bounded
    k-best buffers, so each pair is accumulated once. Before that each row is centred on its
    own mean and divided by its largest |deviation|: Pearson over I_uv is invariant to
    per-row shifts and positive scales, the centring keeps the expanded sums from cancelling
    (ratings of 1e6 + noise) and the scaling keeps 1e308 or subnormal weights from
    overflowing or underflowing. Memory: the ratings and their inverted index, then per
    thread 48 bytes of sums per row and the buffers (48 * k bytes per row); the output is
    O(n_rows * k). The result does not depend on the thread count.

    Columns that most rows rated (a cost model decides, `_dense_columns`) are summed apart:
    a row u that rated one sweeps every v > u in blocks with contiguous, vectorised loops
    over those columns' (n_dense, n_rows) flags and values, instead of visiting the same
    pairs once per column through the index. Before such a sweep each row's floor is seeded
    from its k-th best weight against a probe of rows, so that few candidates reach the
    buffers. 20,000 rows that all rated the same 5 columns take seconds, not minutes.
    """
    prep = prepare(ratings, config)
    if prep is None:
        empty = np.zeros(0, dtype=np.int32)
        return Neighbours(empty, empty, np.zeros(0), empty)
    threads = max(1, min(config.threads, numba.config.NUMBA_NUM_THREADS))
    best = _alloc_best(threads, prep.n_rows, prep.k)
    if threads == 1:
        _seed_floors(prep, 1, best)
        _scan(0, 1, 0, *prep.args, *best)
        out = _collect(1, prep.n_rows, prep.k, *best)
    else:
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        chunksize = numba.set_parallel_chunksize(1)  # dynamic: one row set at a time
        try:
            _seed_floors(prep, threads, best)
            _scan_parallel(threads, *prep.args, *best)
            numba.set_parallel_chunksize(chunksize)
            out = _collect_parallel(threads, prep.n_rows, prep.k, *best)
        finally:
            numba.set_num_threads(previous)
            numba.set_parallel_chunksize(chunksize)
    return Neighbours(*out)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64 keys: a fixed, well-spread pseudo-random order."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def cap_columns(ratings: sp.csr_matrix, cap: int | None) -> sp.csr_matrix:
    """`ratings` with at most `cap` stored entries per column (None: unchanged).

    A longer column keeps the `cap` entries whose hash of (row, column) is smallest, so the
    subset is fixed for a given matrix and spread evenly over its rows.
    """
    n_rows, n_cols = ratings.shape
    counts = np.bincount(ratings.indices, minlength=n_cols)
    if cap is None or counts.max(initial=0) <= cap:
        return ratings
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(ratings.indptr))
    cols = ratings.indices.astype(np.int64)
    long = np.flatnonzero(counts[cols] > cap)  # entries of the columns over the cap
    order = np.lexsort((_mix(rows[long] * n_cols + cols[long]), cols[long]))
    by_col = cols[long][order]
    rank = np.arange(len(order)) - np.searchsorted(by_col, by_col, side="left")
    keep = np.ones(ratings.nnz, dtype=bool)
    keep[long[order[rank >= cap]]] = False
    indptr = np.r_[0, np.cumsum(np.bincount(rows[keep], minlength=n_rows))]
    return sp.csr_matrix((ratings.data[keep], ratings.indices[keep], indptr),
                         shape=ratings.shape)


@dataclass(frozen=True)
class Prepared:
    """The kernel's inputs: centred, scaled rows, their inverted index and the settings."""

    n_rows: int
    k: int
    args: tuple[Any, ...]  # (indptr, indices, values, colptr, colrow, colval, colpos,
    #                        dense_slot, dense_b, dense_y, row_stat, mode, k, min_support,
    #                        threshold, shrinkage)


def prepare(ratings: sp.csr_matrix, config: PearsonConfig) -> Prepared | None:
    """Validate and prepare `ratings` for the kernel; None when no pair can exist."""
    csr = sp.csr_matrix(ratings, dtype=np.float64)  # copies: the caller's matrix is untouched
    csr.sum_duplicates()
    csr.sort_indices()
    if not np.isfinite(csr.data).all():
        raise DataError("neighbour weights must be finite: the interactions' weight column "
                        "holds NaN or infinity (check how duplicates are aggregated)")
    csr = cap_columns(csr, config.max_column_entries)
    n_rows, n_cols = csr.shape
    k = min(config.k, n_rows - 1)
    if k < 1 or csr.nnz == 0:
        return None
    mode = _MODES[config.similarity]
    indptr = csr.indptr.astype(np.int64)
    indices = csr.indices.astype(np.int32)
    values, row_stat, constant = _prepare_rows(indptr, csr.data, mode)
    if mode == _PEARSON and constant == int(np.count_nonzero(np.diff(indptr))):
        warnings.warn(
            "every row's weights are all equal (implicit feedback, or data without a weight "
            "column): Pearson is undefined, so no neighbours come out. Set similarity = "
            '"cosine" or "jaccard" in this neighbours section for co-occurrence data.',
            DataWarning, stacklevel=3)
    colptr, colrow, colval, colpos = _transpose(indptr, indices, values, n_cols)
    dense = _dense_columns(np.diff(colptr), n_rows)
    dense_slot = np.full(n_cols, -1, dtype=np.int64)  # column -> its row in dense_b, or -1
    dense_slot[dense] = np.arange(len(dense))
    dense_b = np.zeros((len(dense), n_rows))  # (n_dense, n_rows): 1 where rated
    dense_y = np.zeros((len(dense), n_rows))  # (n_dense, n_rows): the value, 0 where not
    for d, j in enumerate(dense):
        rows = colrow[colptr[j]:colptr[j + 1]]
        dense_b[d, rows] = 1.0
        dense_y[d, rows] = colval[colptr[j]:colptr[j + 1]]
    return Prepared(n_rows, k, (indptr, indices, values, colptr, colrow, colval, colpos,
                                dense_slot, dense_b, dense_y, row_stat, mode, k,
                                config.min_support, config.threshold, config.shrinkage))


# Cost model of the two ways to sum a column's pairs, in nanoseconds (rounded from the
# kernel on ML-1M and on the dense stress case): through the inverted index, per co-rating
# of a pair (six scattered updates); in the dense sweep, per (row u that rated the column,
# row v > u) (contiguous, vectorised); and per pair for the sweep itself, which weighs
# every pair, co-rated or not, where the inverted index weighs only the touched ones.
_COST_SPARSE, _COST_DENSE, _COST_SWEEP = 3.0, 1.0, 30.0
# The dense columns' two (n_dense, n_rows) float64 arrays stay within this many bytes.
_DENSE_BYTES = 64 << 20


def _dense_columns(counts: np.ndarray, n_rows: int) -> np.ndarray:
    """Columns (ascending) to sum in the dense sweep; none where the inverted index is cheaper.

    A column rated by c rows costs c(c-1)/2 co-ratings in the inverted index, against
    c * n_rows / 2 (u, v) in the sweep: dense pays off for c > n_rows * dense / sparse,
    once the sweep's extra pairs are paid for: all n_rows(n_rows-1)/2 pairs, less those the
    inverted index touches anyway (at least the densest column's). Co-rating that is dense,
    e.g. every row rated the same few columns, touches nearly all pairs either way.
    """
    cap = _DENSE_BYTES // (16 * max(n_rows, 1))
    order = np.argsort(-counts, kind="stable")[:cap]
    c = counts[order].astype(np.float64)
    saved = c * (c - 1.0) / 2.0 * _COST_SPARSE - c * n_rows / 2.0 * _COST_DENSE
    keep = saved > 0.0
    touched = c[0] * (c[0] - 1.0) / 2.0 if len(c) else 0.0
    extra = (n_rows * (n_rows - 1.0) / 2.0 - touched) * _COST_SWEEP
    if not keep.any() or float(saved[keep].sum()) <= extra:
        return np.zeros(0, dtype=np.int64)
    return np.sort(order[keep]).astype(np.int64)


def scan_part(prep: Prepared, part: int, parts: int) -> tuple[np.ndarray, ...]:
    """The k-best buffers of the pairs (u, v > u) with u = part (mod parts), one thread.

    For a cluster: each worker scans one part; `merge_parts` of all parts equals
    `pearson_blocks` with threads = parts, which equals any other thread count.
    """
    best = _alloc_best(1, prep.n_rows, prep.k)
    _seed_floors(prep, 1, best)
    _scan(part, parts, 0, *prep.args, *best)
    return best


def merge_parts(prep: Prepared, parts: list[tuple[np.ndarray, ...]]) -> Neighbours:
    """Top-k neighbours from every part's buffers (in part order)."""
    best = tuple(np.concatenate([p[i] for p in parts]) for i in range(4))
    return Neighbours(*_collect(len(parts), prep.n_rows, prep.k, *best))


@njit(cache=True, nogil=True)
def _prepare_rows(indptr: np.ndarray, data: np.ndarray, mode: int
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """Per entry the value the kernel accumulates, per row a statistic, and the constant rows.

    pearson: (r - m) / max|r - m| in [-1, 1], m the row's mean; row_stat unused.
    cosine: r / max|r|; row_stat = the row's norm after that scaling.
    jaccard: 1.0; row_stat = the row's entry count.
    Returns (values (nnz,), row_stat (n_rows,), number of non-empty rows with one value).
    """
    n_rows = len(indptr) - 1
    values = np.empty(len(data))
    row_stat = np.zeros(n_rows)
    constant = 0
    for u in range(n_rows):
        lo, hi = indptr[u], indptr[u + 1]
        if hi == lo:
            continue
        first, same, scale = data[lo], True, 0.0
        for p in range(lo, hi):
            same = same and data[p] == first
            scale = max(scale, abs(data[p]))
        constant += same
        if mode == _JACCARD:
            values[lo:hi] = 1.0
            row_stat[u] = hi - lo
            continue
        if scale == 0.0:
            values[lo:hi] = 0.0  # all zero: no direction, no variance
            continue
        if mode == _COSINE:
            squares = 0.0
            for p in range(lo, hi):
                values[p] = data[p] / scale
                squares += values[p] * values[p]
            row_stat[u] = math.sqrt(squares)
            continue
        if same:
            values[lo:hi] = 0.0  # one value: no variance on any co-rated set
            continue
        # Centre on the raw values, so that r - m is exact (values near 1e6 keep their
        # noise); the mean is taken in scaled units (no overflow) and only needs to be
        # close, as any shift leaves Pearson unchanged. Halving first keeps r - m finite.
        half = 0.5 if scale > 1e300 else 1.0
        total = 0.0
        for p in range(lo, hi):
            total += data[p] / scale
        mean = total / (hi - lo) * (scale * half)
        spread = 0.0
        for p in range(lo, hi):
            values[p] = data[p] * half - mean
            spread = max(spread, abs(values[p]))
        if spread == 0.0:
            values[lo:hi] = 0.0
        else:
            for p in range(lo, hi):
                values[p] /= spread
    return values, row_stat, constant


@njit(cache=True, nogil=True)
def _transpose(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, n_cols: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Column-major copy (rows ascending within each column) and each entry's place in it."""
    nnz = len(indices)
    colptr = np.zeros(n_cols + 1, dtype=np.int64)
    for p in range(nnz):
        colptr[indices[p] + 1] += 1
    for j in range(n_cols):
        colptr[j + 1] += colptr[j]
    fill = colptr[:-1].copy()
    colrow = np.empty(nnz, dtype=np.uint32)  # unsigned: no wraparound check on acc[v]
    colval = np.empty(nnz)
    colpos = np.empty(nnz, dtype=np.int64)  # CSR entry -> its index in the column arrays
    for u in range(len(indptr) - 1):
        for p in range(indptr[u], indptr[u + 1]):
            q = fill[indices[p]]
            fill[indices[p]] = q + 1
            colrow[q], colval[q], colpos[p] = u, values[p], q
    return colptr, colrow, colval, colpos


def _alloc_best(threads: int, n_rows: int, k: int) -> tuple[np.ndarray, ...]:
    """Per thread and row a buffer of up to 2k candidates, its size and its floor.

    Entries are (weight, neighbour, support) records in one (threads * n_rows * 2k, 3) float64
    array (indices and counts are exact in float64), so an append touches one cache line. A
    full buffer is cut to its best k, and the k-th best becomes the floor (weight, neighbour;
    -inf before the first cut): only better candidates are appended. The floors are compact
    arrays, so most rejections never touch a buffer.
    """
    slots = threads * n_rows
    cap = slots * 2 * k
    return (np.empty((cap, 3)), np.zeros(slots, dtype=np.int64), np.full(slots, -np.inf),
            np.zeros(slots))


# The helpers called per pair or per candidate are compiled with _nrt=False: they only read
# and write arrays their caller owns, and without it numba wraps every call in atomic
# reference-count updates of each array argument, which cost more than the helper itself
# (a third of the kernel's time). Allocating in them is a compile error, not a leak.
@njit(cache=True, nogil=True, _nrt=False)
def _better(w: float, v: int, w2: float, v2: int) -> bool:
    """(w, v) ranks above (w2, v2): higher weight, or the same weight and a lower index."""
    return w > w2 or (w == w2 and v < v2)


@njit(cache=True, nogil=True, _nrt=False)
def _swap(buf: np.ndarray, i: int, j: int) -> None:
    """Exchange records i and j."""
    for c in range(3):
        buf[i, c], buf[j, c] = buf[j, c], buf[i, c]


@njit(cache=True, nogil=True, _nrt=False)
def _select(buf: np.ndarray, lo: int, hi: int, k: int
            ) -> None:
    """Quickselect: the best k of [lo, hi) into [lo, lo + k), the k-th best at lo + k - 1."""
    target = lo + k - 1
    while hi - lo > 1:
        mid = (lo + hi - 1) // 2  # median of three as the pivot, moved to hi - 1
        if _better(buf[mid, 0], buf[mid, 1], buf[lo, 0], buf[lo, 1]):
            _swap(buf, mid, lo)
        if _better(buf[hi - 1, 0], buf[hi - 1, 1], buf[lo, 0], buf[lo, 1]):
            _swap(buf, hi - 1, lo)
        if _better(buf[mid, 0], buf[mid, 1], buf[hi - 1, 0], buf[hi - 1, 1]):
            _swap(buf, mid, hi - 1)
        pw, pv = buf[hi - 1, 0], buf[hi - 1, 1]
        store = lo
        for i in range(lo, hi - 1):
            if _better(buf[i, 0], buf[i, 1], pw, pv):
                _swap(buf, i, store)
                store += 1
        _swap(buf, store, hi - 1)
        if store == target:
            return
        if store < target:
            lo = store + 1
        else:
            hi = store


@njit(cache=True, nogil=True, _nrt=False)
def _offer(buf: np.ndarray, size: np.ndarray,
           floor_w: np.ndarray, floor_v: np.ndarray, slot: int, k: int, w: float, v: int,
           n: int) -> None:
    """Append (w, v, n), which beats the floor, to buffer `slot`; cut it to k when full."""
    base = slot * 2 * k
    s = size[slot]
    buf[base + s, 0], buf[base + s, 1], buf[base + s, 2] = w, v, n
    s += 1
    if s == 2 * k:
        _select(buf, base, base + s, k)
        s = k
        floor_w[slot], floor_v[slot] = buf[base + k - 1, 0], buf[base + k - 1, 1]
    size[slot] = s


# Unsigned index steps: numba checks signed indices for wraparound (a negative index counts
# from the end); unsigned ones skip that check in the innermost loops.
_U1, _U2, _U3, _U4, _U5, _U6 = (np.uint64(i) for i in range(1, 7))
# Rows of the dense sweep handled at once: 7 sums x 256 float64 = 14 KiB, within L1.
_BLOCK = 256
_UB = np.uint64(_BLOCK)


@njit(cache=True, nogil=True, _nrt=False)
def _consider(u: int, v: int, n: float, sx: float, sy: float, sxx: float, syy: float,
              sxy: float, row_stat: np.ndarray, mode: int, k: int, min_support: int,
              threshold: float, shrinkage: float, offset: int, buf: np.ndarray,
              size: np.ndarray, floor_w: np.ndarray, floor_v: np.ndarray) -> None:
    """The weight of (u, v) from its six sums, offered to both rows' buffers if it qualifies."""
    if n < min_support:
        return
    if mode == _PEARSON:
        inv_n = 1.0 / n
        var_u = sxx - sx * sx * inv_n
        var_v = syy - sy * sy * inv_n
        if var_u <= _ZERO_VARIANCE * sxx or var_v <= _ZERO_VARIANCE * syy:
            return
        cov = sxy - sx * sy * inv_n
        den = var_u * var_v
        # Skip the square root when w cannot pass the threshold nor beat the lower of both
        # floors: by sign, or clearly (margin 1e-9) by cov^2 < bar^2 * den.
        bar = max(threshold, min(floor_w[offset + u], floor_w[offset + v]))
        if cov <= 0.0:
            if bar > 0.0 or threshold >= 0.0:
                return
        elif bar > 0.0:
            lift = bar * (1.0 + shrinkage / n)  # the bar before shrinkage
            if cov * cov < lift * lift * den * (1.0 - 1e-9):
                return
        # Values are scaled to [-1, 1]; the product only underflows for co-rated
        # deviations below ~1e-77 of the row's largest.
        den = math.sqrt(den) if den > 1e-290 else math.sqrt(var_u) * math.sqrt(var_v)
        w = cov / den
    elif mode == _COSINE:
        if row_stat[u] == 0.0 or row_stat[v] == 0.0:
            return
        w = sxy / (row_stat[u] * row_stat[v])
    else:
        w = n / (row_stat[u] + row_stat[v] - n)
    if abs(w) > 1.0 - _UNIT:
        w = 1.0 if w > 0.0 else -1.0
    if shrinkage > 0.0:
        w *= n / (n + shrinkage)
    if w <= threshold:
        return
    _offer_pair(u, v, w, int(n), k, offset, buf, size, floor_w, floor_v)


@njit(cache=True, nogil=True, _nrt=False)
def _offer_pair(u: int, v: int, w: float, n: int, k: int, offset: int, buf: np.ndarray,
                size: np.ndarray, floor_w: np.ndarray, floor_v: np.ndarray) -> None:
    """Offer w_uv = w_vu to the buffers of u and v (a call only past a floor test)."""
    if _better(w, v, floor_w[offset + u], floor_v[offset + u]):
        _offer(buf, size, floor_w, floor_v, offset + u, k, w, v, n)
    if _better(w, u, floor_w[offset + v], floor_v[offset + v]):
        _offer(buf, size, floor_w, floor_v, offset + v, k, w, u, n)


@njit(cache=True, nogil=True)
def _scan(t: int, threads: int, slot_t: int, indptr: np.ndarray, indices: np.ndarray,
          values: np.ndarray, colptr: np.ndarray, colrow: np.ndarray, colval: np.ndarray,
          colpos: np.ndarray, dense_slot: np.ndarray, dense_b: np.ndarray,
          dense_y: np.ndarray, row_stat: np.ndarray, mode: int, k: int, min_support: int,
          threshold: float, shrinkage: float, buf: np.ndarray, size: np.ndarray,
          floor_w: np.ndarray, floor_v: np.ndarray) -> None:
    """Rows t, t + threads, ...: every pair (u, v > u) offered to buffer set slot_t's u and v."""
    if dense_b.shape[0] == 0:
        _scan_sparse(t, threads, slot_t, indptr, indices, values, colptr, colrow, colval,
                     colpos, row_stat, mode, k, min_support, threshold, shrinkage, buf, size,
                     floor_w, floor_v)
    else:
        _scan_dense(t, threads, slot_t, indptr, indices, values, colptr, colrow, colval,
                    colpos, dense_slot, dense_b, dense_y, row_stat, mode, k, min_support,
                    threshold, shrinkage, buf, size, floor_w, floor_v)


@njit(cache=True, nogil=True)
def _scan_sparse(t: int, threads: int, slot_t: int, indptr: np.ndarray, indices: np.ndarray,
                 values: np.ndarray, colptr: np.ndarray, colrow: np.ndarray,
                 colval: np.ndarray, colpos: np.ndarray, row_stat: np.ndarray, mode: int,
                 k: int, min_support: int, threshold: float, shrinkage: float,
                 buf: np.ndarray, size: np.ndarray, floor_w: np.ndarray,
                 floor_v: np.ndarray) -> None:
    """`_scan` over the inverted index alone: sums per touched row v, then its weight."""
    n_rows = len(indptr) - 1
    acc = np.zeros(n_rows * 6)  # per v, 6 in a row: n, Σx, Σy, Σx², Σy², Σxy over I_uv
    touched = np.empty(n_rows, dtype=np.uint32)
    offset = slot_t * n_rows  # this thread's (or part's) buffer slots
    for u in range(t, n_rows, threads):
        m = 0
        for p in range(indptr[u], indptr[u + 1]):
            m = _accumulate(acc, touched, m, values[p], colrow, colval, colpos[p] + 1,
                            colptr[indices[p] + 1])
        _finish_touched(u, m, acc, touched, row_stat, mode, k, min_support, threshold,
                        shrinkage, offset, buf, size, floor_w, floor_v)


@njit(cache=True, nogil=True, _nrt=False)
def _accumulate(acc: np.ndarray, touched: np.ndarray, m: int, x: float, colrow: np.ndarray,
                colval: np.ndarray, lo: int, hi: int) -> int:
    """Add u's value x on one column to the sums of the rows colrow[lo:hi] (all v > u).

    acc holds 6 sums per v; a v seen for the first time goes to touched[m]. Returns m.
    """
    xx = x * x
    q, end = np.uint64(lo), np.uint64(hi)
    while q < end:
        r = colrow[q]
        a = np.uint64(r) * _U6
        y = colval[q]
        if acc[a] == 0.0:
            touched[m] = r
            m += 1
        _add4(acc, a, 1.0, x, y, xx)  # n, Σx, Σy, Σx²: one vector add, not four
        _add2(acc, a + _U4, y * y, x * y)  # Σy², Σxy
        q += _U1
    return m


@njit(cache=True, nogil=True, _nrt=False)
def _finish_touched(u: int, m: int, acc: np.ndarray, touched: np.ndarray,
                    row_stat: np.ndarray, mode: int, k: int, min_support: int,
                    threshold: float, shrinkage: float, offset: int, buf: np.ndarray,
                    size: np.ndarray, floor_w: np.ndarray, floor_v: np.ndarray) -> None:
    """The weights of u and its touched rows; their sums are cleared for the next u."""
    for i in range(m):
        v = touched[i]
        a = np.uint64(v) * _U6
        n, sx, sy = acc[a], acc[a + _U1], acc[a + _U2]
        sxx, syy, sxy = acc[a + _U3], acc[a + _U4], acc[a + _U5]
        acc[a], acc[a + _U1], acc[a + _U2] = 0.0, 0.0, 0.0
        acc[a + _U3], acc[a + _U4], acc[a + _U5] = 0.0, 0.0, 0.0
        _consider(u, int(v), n, sx, sy, sxx, syy, sxy, row_stat, mode, k, min_support,
                  threshold, shrinkage, offset, buf, size, floor_w, floor_v)


def _vector_add_codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
    """arr[i : i + len(lanes)] += lanes as one vector load, add and store.

    The accumulation is bound by its load-add-stores to memory, and LLVM does not fuse the
    neighbouring scalar ones itself; unaligned vector access is fine on current CPUs.
    """
    data = context.make_array(signature.args[0])(context, builder, args[0]).data
    vector = ir.VectorType(ir.DoubleType(), len(args) - 2)
    ptr = builder.bitcast(builder.gep(data, [args[1]]), vector.as_pointer())
    lanes = ir.Constant(vector, ir.Undefined)
    for lane, value in enumerate(args[2:]):
        lanes = builder.insert_element(lanes, value, ir.Constant(ir.IntType(32), lane))
    builder.store(builder.fadd(builder.load(ptr, align=8), lanes), ptr, align=8)
    return context.get_dummy_value()


@intrinsic
def _add4(typingctx: Any, arr: Any, i: Any, a: Any, b: Any, c: Any, d: Any) -> Any:
    """arr[i : i + 4] += (a, b, c, d) for a float64 array and an unsigned index."""
    return types.void(arr, i, a, b, c, d), _vector_add_codegen


@intrinsic
def _add2(typingctx: Any, arr: Any, i: Any, a: Any, b: Any) -> Any:
    """arr[i : i + 2] += (a, b)."""
    return types.void(arr, i, a, b), _vector_add_codegen


@njit(cache=True, nogil=True)
def _scan_dense(t: int, threads: int, slot_t: int, indptr: np.ndarray, indices: np.ndarray,
                values: np.ndarray, colptr: np.ndarray, colrow: np.ndarray,
                colval: np.ndarray, colpos: np.ndarray, dense_slot: np.ndarray,
                dense_b: np.ndarray, dense_y: np.ndarray, row_stat: np.ndarray, mode: int,
                k: int, min_support: int, threshold: float, shrinkage: float,
                buf: np.ndarray, size: np.ndarray, floor_w: np.ndarray,
                floor_v: np.ndarray) -> None:
    """`_scan` with the dense columns apart, summed in a sweep over all v > u.

    The other columns' sums come as in `_scan_sparse`; then for a row u that rated a dense
    column a sweep over every v > u in blocks, adding
    the dense columns' sums (contiguous, vectorised loops) and computing every weight
    branch-free before the floor tests. Rows that rated no dense column take the sparse way.
    """
    n_rows = len(indptr) - 1
    n_dense = dense_b.shape[0]
    flat_b = dense_b.reshape(dense_b.size)  # (n_dense * n_rows,) views, column-major rows
    flat_y = dense_y.reshape(dense_y.size)
    acc = np.zeros(n_rows * 6)  # per v, 6 in a row, as in `_scan_sparse`
    touched = np.empty(n_rows, dtype=np.uint32)
    cols = np.empty(n_dense, dtype=np.int64)  # u's dense columns and its values there
    xs = np.empty(n_dense)
    blk = np.empty(7 * _BLOCK)  # (7, _BLOCK): a block's six sums, then their weights
    offset = slot_t * n_rows
    for u in range(t, n_rows, threads):
        m = 0
        md = 0
        for p in range(indptr[u], indptr[u + 1]):
            x = values[p]
            d = dense_slot[indices[p]]
            if d >= 0:
                cols[md], xs[md] = d, x
                md += 1
            else:
                m = _accumulate(acc, touched, m, x, colrow, colval, colpos[p] + 1,
                                colptr[indices[p] + 1])
        if md == 0:
            _finish_touched(u, m, acc, touched, row_stat, mode, k, min_support, threshold,
                            shrinkage, offset, buf, size, floor_w, floor_v)
            continue
        sparse = np.sort(touched[:m])  # the sparse sums, merged into the blocks in order
        head = 0
        for v0 in range(u + 1, n_rows, _BLOCK):
            width = min(_BLOCK, n_rows - v0)
            _dense_block(v0, width, n_rows, cols, xs, md, flat_b, flat_y, blk)
            head = _merge_sparse(blk, acc, sparse, head, m, v0, width)
            _block_weights(u, v0, width, row_stat, mode, min_support, threshold, shrinkage,
                           blk)
            floor_u = floor_w[offset + u]
            for i in range(width):
                w = blk[6 * _BLOCK + i]
                v = v0 + i
                # Most weights lose to both floors: one predictable test each.
                if w >= floor_u or w >= floor_w[offset + v]:
                    if w > threshold:
                        _offer_pair(u, v, w, int(blk[i]), k, offset, buf, size, floor_w,
                                    floor_v)
                        floor_u = floor_w[offset + u]


@njit(cache=True, nogil=True, _nrt=False)
def _merge_sparse(blk: np.ndarray, acc: np.ndarray, sparse: np.ndarray, head: int, m: int,
                  v0: int, width: int) -> int:
    """Add the sums of the sorted touched rows sparse[head:] in [v0, v0 + width) to blk.

    They are cleared in acc; returns the next head.
    """
    while head < m and sparse[head] < v0 + width:
        a = np.uint64(sparse[head]) * _U6
        i = np.uint64(sparse[head] - v0)
        for z in range(6):
            blk[np.uint64(z) * _UB + i] += acc[a + np.uint64(z)]
            acc[a + np.uint64(z)] = 0.0
        head += 1
    return head


@njit(cache=True, nogil=True, _nrt=False)
def _dense_block(v0: int, width: int, n_rows: int, cols: np.ndarray, xs: np.ndarray,
                 md: int, flat_b: np.ndarray, flat_y: np.ndarray, blk: np.ndarray) -> None:
    """The dense columns' six sums of (u, v), v in [v0, v0 + width), into blk[:6] (7, _BLOCK).

    u rated md >= 1 dense columns cols[:md] with values xs[:md]; flat_b and flat_y are the
    (n_dense, n_rows) rated flags and values, flattened. Indices are unsigned (no wraparound
    checks) so that the loops vectorise; columns go two at a time to halve the traffic.
    """
    nr, w = np.uint64(n_rows), np.uint64(width)
    b1, b2, b3, b4, b5 = _UB, _U2 * _UB, _U3 * _UB, _U4 * _UB, _U5 * _UB
    x = xs[0]
    xx = x * x
    o = np.uint64(cols[0]) * nr + np.uint64(v0)
    for i in range(w):  # the first column sets the sums
        b, y = flat_b[o + i], flat_y[o + i]
        blk[i] = b
        blk[b1 + i] = x * b
        blk[b2 + i] = y
        blk[b3 + i] = xx * b
        blk[b4 + i] = y * y
        blk[b5 + i] = x * y
    c = 1
    while c + 1 < md:
        x, z = xs[c], xs[c + 1]
        xx, zz = x * x, z * z
        o = np.uint64(cols[c]) * nr + np.uint64(v0)
        o2 = np.uint64(cols[c + 1]) * nr + np.uint64(v0)
        for i in range(w):
            b, y = flat_b[o + i], flat_y[o + i]
            e, g = flat_b[o2 + i], flat_y[o2 + i]
            blk[i] += b + e
            blk[b1 + i] += x * b + z * e
            blk[b2 + i] += y + g
            blk[b3 + i] += xx * b + zz * e
            blk[b4 + i] += y * y + g * g
            blk[b5 + i] += x * y + z * g
        c += 2
    if c < md:
        x = xs[c]
        xx = x * x
        o = np.uint64(cols[c]) * nr + np.uint64(v0)
        for i in range(w):
            b, y = flat_b[o + i], flat_y[o + i]
            blk[i] += b
            blk[b1 + i] += x * b
            blk[b2 + i] += y
            blk[b3 + i] += xx * b
            blk[b4 + i] += y * y
            blk[b5 + i] += x * y


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)  # 0 / 0 is NaN here, masked after
def _block_weights(u: int, v0: int, width: int, row_stat: np.ndarray, mode: int,
                   min_support: int, threshold: float, shrinkage: float, blk: np.ndarray
                   ) -> None:
    """blk[6] = the weights of the block's sums as in `_consider`.

    -inf where none exists or it is <= threshold; selects instead of branches, so that the
    loop vectorises.
    """
    w_, b1, b2, b3 = np.uint64(width), _UB, _U2 * _UB, _U3 * _UB
    b4, b5, b6 = _U4 * _UB, _U5 * _UB, _U6 * _UB
    for i in range(w_):
        n = blk[i]
        if mode == _PEARSON:
            sx, sy, sxx, syy, sxy = blk[b1 + i], blk[b2 + i], blk[b3 + i], blk[b4 + i], blk[b5 + i]
            inv_n = 1.0 / n
            var_u = sxx - sx * sx * inv_n
            var_v = syy - sy * sy * inv_n
            cov = sxy - sx * sy * inv_n
            den = var_u * var_v
            root = math.sqrt(den) if den > 1e-290 else math.sqrt(var_u) * math.sqrt(var_v)
            w = cov / root
            ok = (var_u > _ZERO_VARIANCE * sxx) & (var_v > _ZERO_VARIANCE * syy)
        elif mode == _COSINE:
            stat = row_stat[np.uint64(v0) + i]
            w = blk[b5 + i] / (row_stat[u] * stat)
            ok = (row_stat[u] != 0.0) & (stat != 0.0)
        else:
            w = n / (row_stat[u] + row_stat[np.uint64(v0) + i] - n)
            ok = True
        w = 1.0 if w > 1.0 - _UNIT else w
        w = -1.0 if w < _UNIT - 1.0 else w
        if shrinkage > 0.0:
            w *= n / (n + shrinkage)
        ok = ok & (n >= min_support) & (w > threshold)
        blk[b6 + i] = w if ok else -np.inf


# Rows probed per row to seed its floor before a dense sweep (at least 8k).
_PROBE = 1024
# The seeded floor sits this far below the probed k-th weight: the probe sums the same
# pairs in another order, so its weights may differ from the sweep's by rounding.
_PROBE_MARGIN = 1e-9


@njit(cache=True, nogil=True)
def _probe_rows(t: int, threads: int, probe: int, indptr: np.ndarray, indices: np.ndarray,
                values: np.ndarray, colptr: np.ndarray, colrow: np.ndarray,
                colval: np.ndarray, dense_slot: np.ndarray, dense_b: np.ndarray,
                dense_y: np.ndarray, row_stat: np.ndarray, mode: int, k: int,
                min_support: int, threshold: float, shrinkage: float, seed: np.ndarray
                ) -> None:
    """seed[u] for rows u = t, t + threads, ...: a lower bound of u's final k-th weight.

    The k-th best weight of u against rows [0, probe) (less a rounding margin) bounds the
    k-th best against all rows from below, so a floor there rejects only candidates that
    cannot make the top k; the sweep then starts with high floors, not -inf, and far fewer
    candidates reach the buffers. Rows with fewer than k weights there keep -inf.
    """
    n_rows = len(indptr) - 1
    flat_b = dense_b.reshape(dense_b.size)
    flat_y = dense_y.reshape(dense_y.size)
    acc = np.zeros(probe * 6)
    touched = np.empty(probe, dtype=np.uint32)
    cols = np.empty(dense_b.shape[0], dtype=np.int64)
    xs = np.empty(dense_b.shape[0])
    blk = np.empty(7 * _BLOCK)
    found = np.empty(probe)
    for u in range(t, n_rows, threads):
        m = 0
        md = 0
        for p in range(indptr[u], indptr[u + 1]):
            d = dense_slot[indices[p]]
            if d >= 0:
                cols[md], xs[md] = d, values[p]
                md += 1
            else:  # rows ascend within a column: those below probe are a prefix
                lo, hi = colptr[indices[p]], colptr[indices[p] + 1]
                end = lo + np.searchsorted(colrow[lo:hi], probe)
                m = _accumulate(acc, touched, m, values[p], colrow, colval, lo, end)
        if md == 0:
            for i in range(m):
                a = np.uint64(touched[i]) * _U6
                for z in range(6):
                    acc[a + np.uint64(z)] = 0.0
            continue
        sparse = np.sort(touched[:m])
        head, count = 0, 0
        for v0 in range(0, probe, _BLOCK):
            width = min(_BLOCK, probe - v0)
            _dense_block(v0, width, n_rows, cols, xs, md, flat_b, flat_y, blk)
            head = _merge_sparse(blk, acc, sparse, head, m, v0, width)
            _block_weights(u, v0, width, row_stat, mode, min_support, threshold, shrinkage,
                           blk)
            for i in range(width):
                w = blk[6 * _BLOCK + i]
                if w > -np.inf and v0 + i != u:
                    found[count] = w
                    count += 1
        if count >= k:
            seed[u] = np.partition(found[:count], count - k)[count - k] - _PROBE_MARGIN


# Row sets per thread in the parallel scans.
_CHUNKS = 16


@njit(cache=True, nogil=True, parallel=True)
def _probe_parallel(threads: int, probe: int, indptr: np.ndarray, indices: np.ndarray,
                    values: np.ndarray, colptr: np.ndarray, colrow: np.ndarray,
                    colval: np.ndarray, dense_slot: np.ndarray, dense_b: np.ndarray,
                    dense_y: np.ndarray, row_stat: np.ndarray, mode: int, k: int,
                    min_support: int, threshold: float, shrinkage: float, seed: np.ndarray
                    ) -> None:
    """`_probe_rows` on `threads * _CHUNKS` interleaved row sets, taken as threads free up."""
    chunks = threads * _CHUNKS
    for t in prange(chunks):
        _probe_rows(t, chunks, probe, indptr, indices, values, colptr, colrow, colval,
                    dense_slot, dense_b, dense_y, row_stat, mode, k, min_support, threshold,
                    shrinkage, seed)


def _seed_floors(prep: Prepared, threads: int, best: tuple[np.ndarray, ...]) -> None:
    """Seed every buffer set's floors with `_probe_rows` (dense sweeps only; same result)."""
    (indptr, indices, values, colptr, colrow, colval, _, dense_slot, dense_b, dense_y,
     row_stat, mode, k, min_support, threshold, shrinkage) = prep.args
    probe = min(prep.n_rows, max(_PROBE, 8 * k))
    if dense_b.shape[0] == 0 or probe >= prep.n_rows:
        return
    seed = np.full(prep.n_rows, -np.inf)
    args = (probe, indptr, indices, values, colptr, colrow, colval, dense_slot, dense_b,
            dense_y, row_stat, mode, k, min_support, threshold, shrinkage, seed)
    if threads == 1:
        _probe_rows(0, 1, *args)
    else:
        _probe_parallel(threads, *args)
    sets = len(best[2]) // prep.n_rows
    best[2].reshape(sets, prep.n_rows)[:] = seed  # floor weights, per buffer set
    # A candidate equal to the floor weight passes whatever its index.
    best[3].reshape(sets, prep.n_rows)[:] = np.where(seed > -np.inf, prep.n_rows, 0.0)


@njit(cache=True, nogil=True, parallel=True)
def _scan_parallel(threads: int, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                   colptr: np.ndarray, colrow: np.ndarray, colval: np.ndarray,
                   colpos: np.ndarray, dense_slot: np.ndarray, dense_b: np.ndarray,
                   dense_y: np.ndarray, row_stat: np.ndarray, mode: int, k: int,
                   min_support: int, threshold: float, shrinkage: float, buf: np.ndarray,
                   size: np.ndarray, floor_w: np.ndarray, floor_v: np.ndarray) -> None:
    """`_scan` on `threads * _CHUNKS` interleaved row sets, taken as threads free up.

    Interleaving balances the rows' costs (v > u: early rows cost more); the many chunks,
    handed out one at a time (`pearson_blocks` sets the chunk size to 1), keep both threads
    busy when one core is slower or shared. Each chunk offers to the buffer set of the
    thread running it: which set holds a candidate does not change the merged top k.
    """
    chunks = threads * _CHUNKS
    for t in prange(chunks):
        _scan(t, chunks, numba.get_thread_id(), indptr, indices, values, colptr, colrow,
              colval, colpos, dense_slot, dense_b, dense_y, row_stat, mode, k, min_support,
              threshold, shrinkage, buf, size, floor_w, floor_v)


@njit(cache=True, nogil=True, _nrt=False)
def _sift_down(buf: np.ndarray, base: int, i: int, end: int
               ) -> None:
    """Restore the heap [base, base + end) below i (a min-heap: the root is the worst)."""
    w, v, n = buf[base + i, 0], buf[base + i, 1], buf[base + i, 2]
    while True:
        child = 2 * i + 1
        if child >= end:
            break
        if child + 1 < end and _better(buf[base + child, 0], buf[base + child, 1],
                                       buf[base + child + 1, 0], buf[base + child + 1, 1]):
            child += 1
        if not _better(w, v, buf[base + child, 0], buf[base + child, 1]):
            break
        for c in range(3):
            buf[base + i, c] = buf[base + child, c]
        i = child
    buf[base + i, 0], buf[base + i, 1], buf[base + i, 2] = w, v, n


@njit(cache=True, nogil=True, _nrt=False)
def _finish(buf: np.ndarray, size: np.ndarray, slot: int,
            k: int) -> int:
    """Cut buffer `slot` to its best k and sort them best first; returns how many."""
    base = slot * 2 * k
    s = size[slot]
    if s > k:
        _select(buf, base, base + s, k)
        s = k
    for i in range(s // 2 - 1, -1, -1):
        _sift_down(buf, base, i, s)
    for end in range(s - 1, 0, -1):  # heapsort: the worst root goes to the back
        _swap(buf, base, base + end)
        _sift_down(buf, base, 0, end)
    size[slot] = s
    return s


@njit(cache=True, nogil=True)
def _merge_row(r: int, threads: int, n_rows: int, k: int, buf: np.ndarray,
               size: np.ndarray, start: int, stop: int, row: np.ndarray,
               nbr: np.ndarray, weight: np.ndarray, support: np.ndarray) -> None:
    """Write row r's best stop - start entries, best first, from its sorted buffers."""
    head = np.zeros(threads, dtype=np.int64)
    for out in range(start, stop):
        best, best_q = -1, 0
        for t in range(threads):
            slot = t * n_rows + r
            if head[t] < size[slot]:
                q = slot * 2 * k + head[t]
                if best < 0 or _better(buf[q, 0], buf[q, 1], buf[best_q, 0], buf[best_q, 1]):
                    best, best_q = t, q
        head[best] += 1
        row[out], weight[out] = r, buf[best_q, 0]
        nbr[out], support[out] = int(buf[best_q, 1]), int(buf[best_q, 2])


@njit(cache=True, nogil=True)
def _collect(threads: int, n_rows: int, k: int, buf: np.ndarray, size: np.ndarray,
             floor_w: np.ndarray, floor_v: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sorted COO output (row, neighbour, weight, support) from the buffers."""
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    for r in range(n_rows):
        held = 0
        for t in range(threads):
            held += _finish(buf, size, t * n_rows + r, k)
        offsets[r + 1] = offsets[r] + min(k, held)
    m = offsets[-1]
    row, nbr = np.empty(m, dtype=np.int32), np.empty(m, dtype=np.int32)
    weight, support = np.empty(m), np.empty(m, dtype=np.int32)
    for r in range(n_rows):
        _merge_row(r, threads, n_rows, k, buf, size, offsets[r], offsets[r + 1], row,
                   nbr, weight, support)
    return row, nbr, weight, support


@njit(cache=True, nogil=True, parallel=True)
def _collect_parallel(threads: int, n_rows: int, k: int, buf: np.ndarray, size: np.ndarray,
                      floor_w: np.ndarray, floor_v: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_collect` with rows spread over the threads (each row is independent)."""
    held = np.zeros(n_rows, dtype=np.int64)
    for r in prange(n_rows):
        for t in range(threads):
            held[r] += _finish(buf, size, t * n_rows + r, k)
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    for r in range(n_rows):
        offsets[r + 1] = offsets[r] + min(k, held[r])
    m = offsets[-1]
    row, nbr = np.empty(m, dtype=np.int32), np.empty(m, dtype=np.int32)
    weight, support = np.empty(m), np.empty(m, dtype=np.int32)
    for r in prange(n_rows):
        _merge_row(r, threads, n_rows, k, buf, size, offsets[r], offsets[r + 1], row,
                   nbr, weight, support)
    return row, nbr, weight, support


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
