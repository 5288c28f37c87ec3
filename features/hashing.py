"""Seeded 64-bit hashes of string keys, fixed by this code rather than by a library's version."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
from numba import njit

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_SEPARATOR = np.uint64(0x1F)  # between the columns of one key, as in "user\x1fitem"


@njit(cache=True, nogil=True)
def _mix(z: np.uint64) -> np.uint64:
    # splitmix64's finaliser: every output bit depends on every input bit.
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _fold(state: np.ndarray, offsets: np.ndarray, data: np.ndarray, first: bool) -> None:
    # FNV-1a over each row's bytes, continuing the row's state (n,) in place.
    for r in range(len(state)):
        h = state[r]
        if not first:
            h = (h ^ _SEPARATOR) * _FNV_PRIME
        for b in range(offsets[r], offsets[r + 1]):
            h = (h ^ np.uint64(data[b])) * _FNV_PRIME
        state[r] = h


@njit(cache=True, nogil=True)
def _finish(state: np.ndarray) -> None:
    for r in range(len(state)):
        state[r] = _mix(state[r])


def _buffers(column: pl.Series | pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (n + 1,) int64, bytes) of a string column, whatever its Arrow layout."""
    arr = column.to_arrow() if isinstance(column, pl.Series) else column
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise ValueError("cannot hash a key column with nulls")
    arr = arr.cast(pa.large_string())  # int64 offsets for any string or string-view input
    _, off, data = arr.buffers()
    offsets = np.frombuffer(off, np.int64)[arr.offset:arr.offset + len(arr) + 1]
    values = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return offsets, values


def key_hash(columns: list[pl.Series | pa.Array | pa.ChunkedArray], seed: int) -> np.ndarray:
    """One uint64 (n,) per row of the string columns taken together, seeded.

    FNV-1a over the row's UTF-8 bytes (columns joined by a unit separator), started from the
    mixed seed and finished with splitmix64, so the value depends only on the key's text and
    the seed: not on row order, sharding, or the version of polars or pyarrow.
    """
    if not columns:
        raise ValueError("key_hash needs at least one column")
    n = len(columns[0])
    start = _FNV_OFFSET ^ _mix(np.uint64(seed % (1 << 64)))
    state = np.full(n, start, np.uint64)
    for i, column in enumerate(columns):
        if len(column) != n:
            raise ValueError("key columns differ in length")
        offsets, values = _buffers(column)
        _fold(state, offsets, values, i == 0)
    _finish(state)
    return state
