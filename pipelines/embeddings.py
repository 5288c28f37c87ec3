"""Embedding stage: interactions to user_factors and item_factors (ALS via implicit)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.columns import ITEM_ID, USER_ID
from features.matrix import build_matrix
from features.vocab import IdVocab
from models.als import AlsConfig, AlsModel


def factors_schema(key: str, dim: int) -> pa.Schema:
    """(key, factors: fixed-size list of float32)."""
    return pa.schema([
        pa.field(key, pa.string(), nullable=False),
        pa.field("factors", pa.list_(pa.float32(), dim), nullable=False),
    ])


def _table(ids: pa.Array, factors: np.ndarray, key: str) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(factors, dtype=np.float32).ravel())
    values = pa.FixedSizeListArray.from_arrays(flat, factors.shape[1])
    return pa.table({key: ids, "factors": values}, schema=factors_schema(key, factors.shape[1]))


def _rows(table: pa.Table, key: str, vocab: IdVocab, out: np.ndarray) -> np.ndarray:
    """`out` with the rows of a factors table written at its ids' places in `vocab`."""
    idx = vocab.index(table.column(key), strict=False)
    ok = idx >= 0
    flat = pc.list_flatten(table.column("factors")).to_numpy()
    if table.num_rows and len(flat) != table.num_rows * out.shape[1]:
        raise ValueError(f"starting {key} factors have {len(flat) // table.num_rows} "
                         f"dimensions, als.embedding_size is {out.shape[1]}")
    out[idx[ok]] = flat.reshape(table.num_rows, out.shape[1])[ok]
    return out


def als_factors(interactions: pa.Table, config: AlsConfig,
                start: tuple[pa.Table, pa.Table] | None = None) -> tuple[pa.Table, pa.Table]:
    """Fit ALS and return (user_factors, item_factors) keyed by the source's ids.

    `start` is an earlier history's (user_factors, item_factors): the fit begins from them
    (ids they lack begin at random) and runs `config.warm_epochs` sweeps.
    """
    m = build_matrix(interactions)
    model = AlsModel(config)
    init = None
    if start is not None:
        users, items = model.random_start(len(m.users), len(m.items))
        init = (_rows(start[0], USER_ID, m.users, users), _rows(start[1], ITEM_ID, m.items, items))
    model.fit(m.weights, init)
    assert model.user_factors is not None and model.item_factors is not None
    return (_table(m.users.ids, model.user_factors, USER_ID),
            _table(m.items.ids, model.item_factors, ITEM_ID))
