"""LambdaRanker: learns a planted signal, round-trips, fixed bins, refuses to predict unfitted."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.errors import NotFittedError
from models.ranker import FeatureBins, LambdaRanker, RankerConfig


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


def test_fixed_bins_known_answer() -> None:
    x = np.array([[0.0, 5.0], [1.0, 5.0], [1.0, np.nan], [2.0, 5.0], [np.nan, 5.0]],
                 dtype=np.float32)
    bins = FeatureBins.fit(x)
    np.testing.assert_array_equal(bins.edges[0], [0.5, 1.5])
    assert len(bins.edges[1]) == 0  # one distinct value: one bin
    np.testing.assert_array_equal(bins.codes(x), [[1, 1], [2, 1], [2, 0], [3, 1], [0, 1]])
    # Unseen values land in the bin their edges put them in.
    np.testing.assert_array_equal(bins.codes(np.array([[-3.0, 7.0], [0.7, 1.0], [9.0, 5.0]],
                                                      dtype=np.float32))[:, 0], [1, 2, 3])
    forced = json.loads(bins.forced_bins())
    every = [c + 0.5 for c in range(1, 254)]  # codes 1..254: the same for every feature
    assert forced == [{"feature": 0, "bin_upper_bound": every},
                      {"feature": 1, "bin_upper_bound": every}]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, width=32) | st.just(float("nan")), min_size=1,
                max_size=400), st.integers(0, 2**16))
def test_a_code_boundary_is_a_raw_threshold(values: list[float], seed: int) -> None:
    col = np.array(values, dtype=np.float32)[:, None]
    bins = FeatureBins.fit(col, sample=200, seed=seed)
    codes = bins.codes(col)[:, 0]
    finite = ~np.isnan(col[:, 0])
    assert (codes[~finite] == 0).all() and (codes[finite] >= 1).all()
    for c in range(1, len(bins.edges[0]) + 1):  # code <= c  <=>  x <= the raw threshold
        raw = bins.raw_threshold(0, c + 0.5)
        np.testing.assert_array_equal(codes[finite] <= c, col[finite, 0] <= raw)
    assert bins.raw_threshold(0, 1e-35) < col[finite, 0].astype(np.float64).min(initial=np.inf)
    assert len(bins.edges[0]) <= 253


def test_the_raw_model_scores_raw_rows_as_the_coded_model_scores_codes() -> None:
    import lightgbm as lgb

    x, y, groups = planted(users=120)
    rng = np.random.default_rng(5)
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values go where code 0 went
    cfg = RankerConfig(epochs=40, min_data_in_leaf=5)
    params, (xt, yt, gt), _, bins = LambdaRanker(cfg).prepare(x, y, groups, ["a", "b", "c"])
    with tempfile.TemporaryDirectory() as tmp:
        forced = Path(tmp) / "bins.json"
        forced.write_text(bins.forced_bins())
        coded = lgb.train({**params, **bins.params(forced)}, lgb.Dataset(xt, yt, group=gt),
                          num_boost_round=40)
    raw = lgb.Booster(model_str=bins.raw_model(coded.model_to_string()))
    # New rows too: values between the training values and outside their range.
    fresh = np.concatenate([x, rng.normal(scale=3, size=(500, 3)).astype(np.float32)])
    fresh[rng.random(fresh.shape) < 0.05] = np.nan
    np.testing.assert_array_equal(raw.predict(fresh), coded.predict(bins.codes(fresh)))


def test_a_split_off_the_code_boundaries_is_refused() -> None:
    bins = FeatureBins((np.array([0.5, 1.5]),))
    with pytest.raises(ValueError, match="not a code boundary"):
        bins.raw_threshold(0, 1.75)


def test_codes_fed_a_batch_at_a_time_train_the_same_model(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    import lightgbm as lgb

    import models.ranker as ranker

    # Small batches so the rows go in many pieces; LightGBM's own matrix path is the oracle.
    monkeypatch.setattr(ranker, "CODE_BATCH", 97)
    x, y, groups = planted(users=150)
    x[np.random.default_rng(2).random(x.shape) < 0.1] = np.nan
    cfg = RankerConfig(epochs=25, min_data_in_leaf=5)
    params, (xt, yt, gt), (xv, yv, gv), bins = LambdaRanker(cfg).prepare(
        x, y, groups, ["a", "b", "c"])
    with tempfile.TemporaryDirectory() as tmp:
        forced = Path(tmp) / "bins.json"
        forced.write_text(bins.forced_bins())
        binning = {**params, **bins.params(forced)}
        models = []
        for wrap in (lambda c: c, ranker._code_rows):
            dt = lgb.Dataset(wrap(xt), yt, group=gt, params=binning).construct()
            dv = lgb.Dataset(wrap(xv), yv, group=gv, reference=dt, params=binning).construct()
            models.append(lgb.train(params, dt, num_boost_round=25, valid_sets=[dv])
                          .model_to_string())
    assert models[0] == models[1]
