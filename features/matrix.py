"""Interactions table to a CSR user x item matrix with its two id vocabularies."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from features.columns import ITEM_ID, USER_ID, WEIGHT
from features.vocab import IdVocab


@dataclass(frozen=True)
class InteractionMatrix:
    """CSR matrix (users x items) of weights plus the vocabularies naming rows and columns."""

    users: IdVocab
    items: IdVocab
    weights: sp.csr_matrix  # (n_users, n_items) float64, one entry per (user, item) pair

    @property
    def binary(self) -> sp.csr_matrix:
        """Same pattern with every stored value 1.0."""
        out = self.weights.copy()
        out.data = np.ones_like(out.data)
        return out


def build_matrix(
    interactions: pa.Table, users: IdVocab | None = None, items: IdVocab | None = None
) -> InteractionMatrix:
    """Build the CSR matrix; vocabularies default to the ids present in `interactions`.

    Rows with ids outside given vocabularies are dropped (an evaluation's test items, say).
    Duplicate pairs are summed (ingest already aggregates them, so this is a no-op there).
    """
    users = users or IdVocab.from_ids(interactions.column(USER_ID))
    items = items or IdVocab.from_ids(interactions.column(ITEM_ID))
    u = users.index(interactions.column(USER_ID), strict=False)
    i = items.index(interactions.column(ITEM_ID), strict=False)
    w = interactions.column(WEIGHT).to_numpy().astype(np.float64)
    keep = (u >= 0) & (i >= 0)
    mat = sp.csr_matrix((w[keep], (u[keep], i[keep])), shape=(len(users), len(items)))
    mat.sum_duplicates()
    mat.sort_indices()
    return InteractionMatrix(users, items, mat)
