"""Evaluation protocol: the split rule (no leakage), metrics against hand-computed values."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.evaluate import SplitConfig, evaluate_lists, split_last, top_k_from_scores


def inter(rows: list[tuple[str, str, int | None]]) -> pa.Table:
    base = datetime(2020, 1, 1)
    return pa.table({
        "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
        "weight": [1.0] * len(rows),
        "ts": pa.array([None if r[2] is None else base + timedelta(seconds=r[2]) for r in rows],
                       pa.timestamp("us")),
    })


def test_split_holds_out_last_tenth_with_item_id_tie_break() -> None:
    # u1: 12 interactions, the last two share a time: floor(1.2) = 1 held out, the higher id.
    rows = [("u1", str(i), i) for i in range(10)] + [("u1", "11", 50), ("u1", "10", 50)]
    rows += [("u2", str(i), i) for i in (0, 1, 2, 10, 11)]  # fewer than 10: all train
    rows += [("u3", "99", 1)] + [("u3", str(i), 0) for i in range(9)]  # 99 is unseen elsewhere
    s = split_last(inter(rows), SplitConfig())
    assert s.temporal
    assert sorted(zip(s.test["user_id"].to_pylist(), s.test["item_id"].to_pylist(),
                      strict=True)) == [("u1", "11")]  # u3's "99" is unseen in train: dropped
    assert s.train.num_rows == len(rows) - 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 30), st.integers(0, 5)),
                min_size=1, max_size=120, unique_by=lambda t: (t[0], t[1])))
def test_split_never_leaks_test_into_train(rows: list[tuple[int, int, int]]) -> None:
    table = inter([(f"u{u}", f"i{i}", t) for u, i, t in rows])
    s = split_last(table, SplitConfig())
    train = set(zip(s.train["user_id"].to_pylist(), s.train["item_id"].to_pylist(),
                    strict=True))
    test = set(zip(s.test["user_id"].to_pylist(), s.test["item_id"].to_pylist(), strict=True))
    assert not train & test
    # Every test interaction is no earlier than any train interaction of the same user.
    t_of = {(f"u{u}", f"i{i}"): t for u, i, t in rows}
    for user, item in test:
        assert all(t_of[(user, item)] >= t_of[p] for p in train if p[0] == user)
    assert {i for _, i in test} <= {i for _, i in train}


def test_split_without_timestamps_is_seeded_random() -> None:
    rows = [("u", f"i{i}", None) for i in range(20)] + [("v", f"i{i}", None) for i in range(20)]
    rows += [("w", f"i{i}", None) for i in range(20)][:9]  # < 10: all in train
    rows += [(f"x{i}", f"i{i}", None) for i in range(20)]  # every item stays in train
    a = split_last(inter(rows), SplitConfig(seed=1))
    b = split_last(inter(rows), SplitConfig(seed=1))
    assert not a.temporal and a.test.equals(b.test) and a.test.num_rows == 4


def test_metrics_against_hand_computed_values() -> None:
    test = inter([("u", "a", 0), ("u", "b", 0), ("v", "c", 0)])
    recs = pa.table({"user_id": ["u", "u", "u", "v"], "item_id": ["x", "a", "b", "y"],
                     "rank": pa.array([1, 2, 3, 1], pa.int32())})
    items = pa.table({"item_id": ["a", "b", "c", "x", "y"], "title": ["t"] * 5,
                      "author_id": ["p", "p", "q", "p", "r"]})
    m = evaluate_lists(recs, test, items, n_items=10)
    dcg_u = 1 / math.log2(3) + 1 / math.log2(4)
    idcg_u = 1 + 1 / math.log2(3)
    assert abs(m.ndcg_at_10 - (dcg_u / idcg_u + 0.0) / 2) < 1e-12
    assert abs(m.recall_at_20 - (2 / 2 + 0 / 1) / 2) < 1e-12
    assert abs(m.coverage_at_10 - 4 / 10) < 1e-12
    assert m.distinct_authors_at_10 == (1 + 1) / 2  # u: all by p; v: r
    assert m.max_per_author_at_10 == (3 + 1) / 2
    assert m.worst_max_per_author_at_10 == 3
    assert m.users == 2


def test_short_lists_count_missing_slots_as_misses() -> None:
    test = inter([("u", f"i{i}", 0) for i in range(30)])
    recs = pa.table({"user_id": ["u"], "item_id": ["i0"], "rank": pa.array([1], pa.int32())})
    items = pa.table({"item_id": [f"i{i}" for i in range(30)], "title": ["t"] * 30,
                      "author_id": ["a"] * 30})
    m = evaluate_lists(recs, test, items, 30)
    idcg = sum(1 / math.log2(r + 1) for r in range(1, 11))
    assert abs(m.ndcg_at_10 - 1 / idcg) < 1e-12
    assert abs(m.recall_at_20 - 1 / 20) < 1e-12


def test_top_k_ties_go_to_lower_item_id() -> None:
    scored = pa.table({"user_id": ["u"] * 3, "item_id": ["10", "9", "2"],
                       "score": [1.0, 1.0, 0.5]})
    out = top_k_from_scores(scored, 2)
    assert out["item_id"].to_pylist() == ["9", "10"]


def test_popularity_lists_equal_a_brute_force_oracle_with_heavy_users() -> None:
    import numpy as np
    import pyarrow as pa

    from pipelines.evaluate import popularity_lists

    rng = np.random.default_rng(5)
    items = [f"i{j:03d}" for j in range(300)]
    pop = rng.zipf(1.5, 300).astype(float)
    rows = [(f"u{u}", items[j]) for u in range(40)
            for j in rng.choice(300, size=int(rng.integers(1, 20)), replace=False,
                                p=pop / pop.sum())]
    rows += [("heavy", items[j]) for j in range(250)]  # has seen most of the popular head
    train = pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows]})
    users = sorted({r[0] for r in rows}) + ["new-user"]
    counts: dict[str, int] = {}
    for _, i in rows:
        counts[i] = counts.get(i, 0) + 1
    order = sorted(counts, key=lambda i: (-counts[i], i))
    got = popularity_lists(train, users, 10).to_pylist()
    for u in users:
        seen = {i for v, i in rows if v == u}
        want = [i for i in order if i not in seen][:10]
        mine = [r["item_id"] for r in sorted((r for r in got if r["user_id"] == u),
                                             key=lambda r: r["rank"])]
        assert mine == want, u
