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


def test_warm_fit_from_implicits_own_start_is_the_cold_fit() -> None:
    # Oracle: starting from the random factors implicit itself draws, with as many warm sweeps
    # as cold ones, must give the cold fit bit for bit (the start is really used as given).
    train, _ = checkerboard()
    cold = AlsModel(AlsConfig(embedding_size=4, epochs=5, seed=3)).fit(train)
    model = AlsModel(AlsConfig(embedding_size=4, epochs=5, warm_epochs=5, seed=3))
    warm = model.fit(train, model.random_start(*train.shape))
    np.testing.assert_array_equal(warm.user_factors, cold.user_factors)
    np.testing.assert_array_equal(warm.item_factors, cold.item_factors)


def test_warm_start_from_a_fit_needs_few_sweeps() -> None:
    train, like = checkerboard()
    first = AlsModel(AlsConfig(embedding_size=4, reg=0.01, epochs=15, seed=0)).fit(train)
    assert first.user_factors is not None and first.item_factors is not None
    warm = AlsModel(AlsConfig(embedding_size=4, reg=0.01, epochs=15, warm_epochs=1, seed=0))
    warm.fit(train, (first.user_factors, first.item_factors))
    scores = warm.scores(np.arange(20))
    scores[train.toarray() > 0] = -np.inf
    np.testing.assert_array_equal(scores.argmax(axis=1), np.arange(20))
    # One sweep from a converged start moves the factors little.
    assert warm.user_factors is not None
    drift = np.abs(warm.user_factors - first.user_factors).max()
    assert drift < 0.1 * np.abs(first.user_factors).max()


def test_warm_epochs_zero_ignores_the_start() -> None:
    train, _ = checkerboard()
    cold = AlsModel(AlsConfig(embedding_size=4, epochs=3, seed=1)).fit(train)
    ones = (np.ones((20, 4), np.float32), np.ones((20, 4), np.float32))
    again = AlsModel(AlsConfig(embedding_size=4, epochs=3, seed=1)).fit(train, ones)
    np.testing.assert_array_equal(again.user_factors, cold.user_factors)


def test_a_start_of_the_wrong_shape_is_refused() -> None:
    train, _ = checkerboard()
    model = AlsModel(AlsConfig(embedding_size=4, epochs=3, warm_epochs=1))
    with pytest.raises(ValueError, match="do not match"):
        model.fit(train, (np.zeros((19, 4), np.float32), np.zeros((20, 4), np.float32)))
