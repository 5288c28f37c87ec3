"""Neighbourhood stage: interactions to user_neighbours and item_neighbours (Pearson top-k)."""

from __future__ import annotations

import pyarrow as pa

from features.columns import ITEM_ID, NEIGHBOUR_ID, SUPPORT, USER_ID, WEIGHT
from features.matrix import build_matrix
from features.vocab import IdVocab
from models.neighbours import Neighbours, PearsonConfig, pearson_blocks


def neighbours_schema(key: str) -> pa.Schema:
    """(key, neighbour_id, weight, support), e.g. key = user_id."""
    return pa.schema([
        pa.field(key, pa.string(), nullable=False),
        pa.field(NEIGHBOUR_ID, pa.string(), nullable=False),
        pa.field(WEIGHT, pa.float64(), nullable=False),
        pa.field(SUPPORT, pa.int32(), nullable=False),
    ])


def as_table(nb: Neighbours, vocab: IdVocab, key: str) -> pa.Table:
    """Neighbours in dense indices as a published table keyed by `key`."""
    return pa.table({
        key: vocab.take(nb.row), NEIGHBOUR_ID: vocab.take(nb.neighbour),
        WEIGHT: pa.array(nb.weight), SUPPORT: pa.array(nb.support),
    }, schema=neighbours_schema(key))


def user_neighbours(interactions: pa.Table, config: PearsonConfig) -> pa.Table:
    """User-based Pearson: rows are users, co-rated entries are items."""
    m = build_matrix(interactions)
    return as_table(pearson_blocks(m.weights, config), m.users, USER_ID)


def item_neighbours(interactions: pa.Table, config: PearsonConfig) -> pa.Table:
    """Item-based Pearson: rows are items, co-rated entries are the users who rated both."""
    m = build_matrix(interactions)
    return as_table(pearson_blocks(m.weights.T.tocsr(), config), m.items, ITEM_ID)
