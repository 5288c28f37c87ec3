"""Embedding stage: interactions to user_factors and item_factors (ALS via implicit)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from features.columns import ITEM_ID, USER_ID
from features.matrix import build_matrix
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


def als_factors(interactions: pa.Table, config: AlsConfig) -> tuple[pa.Table, pa.Table]:
    """Fit ALS and return (user_factors, item_factors) keyed by the source's ids."""
    m = build_matrix(interactions)
    model = AlsModel(config).fit(m.weights)
    assert model.user_factors is not None and model.item_factors is not None
    return (_table(m.users.ids, model.user_factors, USER_ID),
            _table(m.items.ids, model.item_factors, ITEM_ID))
