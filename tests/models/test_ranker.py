"""LambdaRanker: learns a planted signal, round-trips, refuses to predict unfitted."""

from __future__ import annotations

import numpy as np
import pytest

from features.errors import NotFittedError
from models.ranker import LambdaRanker, RankerConfig


def planted(seed: int = 0, users: int = 200, per_user: int = 30
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature 1 decides relevance (top 3 per user); features 0 and 2 are noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(users * per_user, 3)).astype(np.float32)
    groups = np.repeat(np.arange(users), per_user)
    y = np.zeros(len(x), dtype=np.float32)
    for g in range(users):
        rows = np.flatnonzero(groups == g)
        y[rows[np.argsort(-x[rows, 1])[:3]]] = 1
    return x, y, groups


def test_ranker_learns_planted_signal() -> None:
    x, y, groups = planted()
    cfg = RankerConfig(epochs=60, min_data_in_leaf=5, early_stopping=20, feature_fraction=1.0)
    model = LambdaRanker(cfg).fit(x, y, groups, ["noise_a", "signal", "noise_b"])
    xt, yt, gt = planted(seed=1, users=50)
    scores = model.predict(xt)
    hits = 0.0
    for g in range(50):
        rows = np.flatnonzero(gt == g)
        top3 = rows[np.argsort(-scores[rows])[:3]]
        hits += yt[top3].sum()
        assert yt[top3[0]] == 1  # the best-scored item is always a planted one
    assert hits / (50 * 3) > 0.9  # random order would give 0.1
    imp = model.importance()
    assert max(imp, key=imp.__getitem__) == "signal"


def test_round_trip_and_not_fitted() -> None:
    x, y, groups = planted(users=40)
    model = LambdaRanker(RankerConfig(epochs=10, min_data_in_leaf=5)).fit(
        x, y, groups, ["a", "b", "c"])
    again = LambdaRanker.from_dict(model.to_dict())
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    assert again.features == ["a", "b", "c"]
    with pytest.raises(NotFittedError):
        LambdaRanker(RankerConfig()).predict(x)
