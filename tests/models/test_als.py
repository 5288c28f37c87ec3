"""ALS on a checkerboard: the withheld cells of a user's own colour must come back first."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from features.errors import NotFittedError
from models.als import AlsConfig, AlsModel


def checkerboard(n: int = 20) -> tuple[sp.csr_matrix, np.ndarray]:
    """Users like items of their parity; the diagonal is withheld from training."""
    like = (np.add.outer(np.arange(n), np.arange(n)) % 2) == 0
    train = like & ~np.eye(n, dtype=bool)
    return sp.csr_matrix(train.astype(np.float64)), like


def test_checkerboard_recovers_withheld_diagonal() -> None:
    train, like = checkerboard()
    model = AlsModel(AlsConfig(embedding_size=4, reg=0.01, epochs=15, seed=0)).fit(train)
    scores = model.scores(np.arange(20))
    scores[train.toarray() > 0] = -np.inf
    best = scores.argmax(axis=1)
    np.testing.assert_array_equal(best, np.arange(20))  # the withheld own-colour item
    assert np.all(like[np.arange(20), best])


def test_same_seed_same_factors() -> None:
    train, _ = checkerboard()
    a = AlsModel(AlsConfig(embedding_size=4, epochs=3, seed=1)).fit(train)
    b = AlsModel(AlsConfig(embedding_size=4, epochs=3, seed=1)).fit(train)
    np.testing.assert_array_equal(a.user_factors, b.user_factors)


def test_not_fitted() -> None:
    with pytest.raises(NotFittedError):
        AlsModel(AlsConfig()).scores(np.arange(2))
