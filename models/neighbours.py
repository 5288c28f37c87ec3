"""Row-to-row neighbourhoods (Pearson over co-rated entries, cosine, Jaccard), compiled."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numba
import numpy as np
import scipy.sparse as sp
from numba import njit, prange
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
    """
    prep = prepare(ratings, config)
    if prep is None:
        empty = np.zeros(0, dtype=np.int32)
        return Neighbours(empty, empty, np.zeros(0), empty)
    threads = max(1, min(config.threads, numba.config.NUMBA_NUM_THREADS))
    best = _alloc_best(threads, prep.n_rows, prep.k)
    if threads == 1:
        _scan(0, 1, 0, *prep.args, *best)
        out = _collect(1, prep.n_rows, prep.k, *best)
    else:
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            _scan_parallel(threads, *prep.args, *best)
            out = _collect_parallel(threads, prep.n_rows, prep.k, *best)
        finally:
            numba.set_num_threads(previous)
    return Neighbours(*out)


@dataclass(frozen=True)
class Prepared:
    """The kernel's inputs: centred, scaled rows, their inverted index and the settings."""

    n_rows: int
    k: int
    args: tuple[Any, ...]  # (indptr, indices, values, colptr, colrow, colval, colpos,
    #                        row_stat, mode, k, min_support, threshold, shrinkage)


def prepare(ratings: sp.csr_matrix, config: PearsonConfig) -> Prepared | None:
    """Validate and prepare `ratings` for the kernel; None when no pair can exist."""
    csr = sp.csr_matrix(ratings, dtype=np.float64)  # copies: the caller's matrix is untouched
    csr.sum_duplicates()
    csr.sort_indices()
    if not np.isfinite(csr.data).all():
        raise DataError("neighbour weights must be finite: the interactions' weight column "
                        "holds NaN or infinity (check how duplicates are aggregated)")
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
    return Prepared(n_rows, k, (indptr, indices, values, colptr, colrow, colval, colpos,
                                row_stat, mode, k, config.min_support, config.threshold,
                                config.shrinkage))


def scan_part(prep: Prepared, part: int, parts: int) -> tuple[np.ndarray, ...]:
    """The k-best buffers of the pairs (u, v > u) with u = part (mod parts), one thread.

    For a cluster: each worker scans one part; `merge_parts` of all parts equals
    `pearson_blocks` with threads = parts, which equals any other thread count.
    """
    best = _alloc_best(1, prep.n_rows, prep.k)
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
    colrow = np.empty(nnz, dtype=np.int32)
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


@njit(cache=True, nogil=True, inline="always")
def _better(w: float, v: int, w2: float, v2: int) -> bool:
    """(w, v) ranks above (w2, v2): higher weight, or the same weight and a lower index."""
    return w > w2 or (w == w2 and v < v2)


@njit(cache=True, nogil=True, inline="always")
def _swap(buf: np.ndarray, i: int, j: int) -> None:
    """Exchange records i and j."""
    for c in range(3):
        buf[i, c], buf[j, c] = buf[j, c], buf[i, c]


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def _scan(t: int, threads: int, slot_t: int, indptr: np.ndarray, indices: np.ndarray,
          values: np.ndarray,
          colptr: np.ndarray, colrow: np.ndarray, colval: np.ndarray, colpos: np.ndarray,
          row_stat: np.ndarray, mode: int, k: int, min_support: int, threshold: float,
          shrinkage: float, buf: np.ndarray,
          size: np.ndarray, floor_w: np.ndarray, floor_v: np.ndarray) -> None:
    """Rows t, t + threads, ...: every pair (u, v > u) offered to buffer set slot_t's u and v."""
    n_rows = len(indptr) - 1
    acc = np.zeros((n_rows, 6))  # per v: n, Σx, Σy, Σx², Σy², Σxy over I_uv
    touched = np.empty(n_rows, dtype=np.int32)
    offset = slot_t * n_rows  # this thread's (or part's) buffer slots
    for u in range(t, n_rows, threads):
        m = 0
        for p in range(indptr[u], indptr[u + 1]):
            x = values[p]
            for q in range(colpos[p] + 1, colptr[indices[p] + 1]):  # rows v > u rating j
                v = colrow[q]
                y = colval[q]
                if acc[v, 0] == 0.0:
                    touched[m] = v
                    m += 1
                acc[v, 0] += 1.0
                acc[v, 1] += x
                acc[v, 2] += y
                acc[v, 3] += x * x
                acc[v, 4] += y * y
                acc[v, 5] += x * y
        for i in range(m):
            v = touched[i]
            n = acc[v, 0]
            sx, sy, sxx, syy, sxy = acc[v, 1], acc[v, 2], acc[v, 3], acc[v, 4], acc[v, 5]
            for z in range(6):
                acc[v, z] = 0.0
            if n < min_support:
                continue
            if mode == _PEARSON:
                inv_n = 1.0 / n
                var_u = sxx - sx * sx * inv_n
                var_v = syy - sy * sy * inv_n
                if var_u <= _ZERO_VARIANCE * sxx or var_v <= _ZERO_VARIANCE * syy:
                    continue
                cov = sxy - sx * sy * inv_n
                den = var_u * var_v
                # Skip the square root when w cannot pass the threshold nor beat the lower
                # of both floors: by sign, or clearly (margin 1e-9) by cov^2 < bar^2 * den.
                bar = max(threshold, min(floor_w[offset + u], floor_w[offset + v]))
                if cov <= 0.0:
                    if bar > 0.0 or threshold >= 0.0:
                        continue
                elif bar > 0.0:
                    lift = bar * (1.0 + shrinkage / n)  # the bar before shrinkage
                    if cov * cov < lift * lift * den * (1.0 - 1e-9):
                        continue
                # Values are scaled to [-1, 1]; the product only underflows for co-rated
                # deviations below ~1e-77 of the row's largest.
                den = math.sqrt(den) if den > 1e-290 else math.sqrt(var_u) * math.sqrt(var_v)
                w = cov / den
            elif mode == _COSINE:
                if row_stat[u] == 0.0 or row_stat[v] == 0.0:
                    continue
                w = sxy / (row_stat[u] * row_stat[v])
            else:
                w = n / (row_stat[u] + row_stat[v] - n)
            if abs(w) > 1.0 - _UNIT:
                w = 1.0 if w > 0.0 else -1.0
            if shrinkage > 0.0:
                w *= n / (n + shrinkage)
            if w <= threshold:
                continue
            # The floor test is inline: most candidates stop here, without a call.
            if _better(w, v, floor_w[offset + u], floor_v[offset + u]):
                _offer(buf, size, floor_w, floor_v, offset + u, k, w, v, int(n))
            if _better(w, u, floor_w[offset + v], floor_v[offset + v]):
                _offer(buf, size, floor_w, floor_v, offset + v, k, w, u, int(n))


@njit(cache=True, nogil=True, parallel=True)
def _scan_parallel(threads: int, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                   colptr: np.ndarray, colrow: np.ndarray, colval: np.ndarray,
                   colpos: np.ndarray, row_stat: np.ndarray, mode: int, k: int,
                   min_support: int, threshold: float, shrinkage: float, buf: np.ndarray,
                   size: np.ndarray, floor_w: np.ndarray, floor_v: np.ndarray) -> None:
    """`_scan` on `threads` interleaved row sets at once (interleaving balances v > u)."""
    for t in prange(threads):
        _scan(t, threads, t, indptr, indices, values, colptr, colrow, colval, colpos, row_stat,
              mode, k, min_support, threshold, shrinkage, buf, size, floor_w, floor_v)


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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
