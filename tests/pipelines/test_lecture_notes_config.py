"""The shipped lecture-notes config reproduces the notes' Pearson formulas exactly."""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import pyarrow as pa

from pipelines.neighbours import item_neighbours, user_neighbours
from pipelines.recommend.config import RunConfig

CONFIG = Path(__file__).resolve().parents[2] / "flows" / "configs" / "lecture-notes.toml"

# Users x items ratings with co-rated sets of different sizes (means over I_uv only).
RATINGS = {
    "a": {"1": 5, "2": 3, "3": 4, "4": 4, "5": 1, "6": 2},
    "b": {"1": 3, "2": 1, "3": 2, "4": 3, "5": 3, "6": 1},
    "c": {"1": 4, "2": 3, "3": 4, "4": 3, "5": 5, "6": 4},
    "d": {"1": 3, "2": 3, "3": 1, "4": 5, "5": 4, "6": 2},
    "e": {"1": 1, "2": 5, "3": 5, "4": 2, "5": 1},
}


def table() -> pa.Table:
    rows = [(u, i, float(r)) for u, items in RATINGS.items() for i, r in items.items()]
    return pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                     "weight": [r[2] for r in rows],
                     "ts": pa.array([None] * len(rows), pa.timestamp("us", tz="UTC"))})


def pearson(x: dict[str, float], y: dict[str, float]) -> tuple[float | None, int]:
    common = sorted(set(x) & set(y))
    if not common:
        return None, 0
    mx = sum(x[c] for c in common) / len(common)
    my = sum(y[c] for c in common) / len(common)
    cov = sum((x[c] - mx) * (y[c] - my) for c in common)
    vx = sum((x[c] - mx) ** 2 for c in common)
    vy = sum((y[c] - my) ** 2 for c in common)
    return (cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else None), len(common)


def oracle(rows: dict[str, dict[str, float]], min_support: int) -> dict[tuple[str, str], float]:
    out = {}
    for u, v in combinations(sorted(rows), 2):
        w, n = pearson(rows[u], rows[v])
        if w is not None and w > 0 and n >= min_support:
            out[(u, v)] = out[(v, u)] = w
    return out


def got(tbl: pa.Table, key: str) -> dict[tuple[str, str], float]:
    return {(r[key], r["neighbour_id"]): r["weight"] for r in tbl.to_pylist()}


def test_lecture_notes_config_is_the_formula() -> None:
    cfg = RunConfig.from_toml(CONFIG)
    assert cfg.item_neighbours.shrinkage == 0 and cfg.user_neighbours.shrinkage == 0
    assert cfg.candidates.ease == 0
    items: dict[str, dict[str, float]] = {}
    for u, row in RATINGS.items():
        for i, r in row.items():
            items.setdefault(i, {})[u] = float(r)
    want_users = oracle({u: {i: float(r) for i, r in row.items()} for u, row in
                         RATINGS.items()}, cfg.user_neighbours.min_support)
    want_items = oracle(items, cfg.item_neighbours.min_support)
    for key, want, fn, pc in (("user_id", want_users, user_neighbours, cfg.user_neighbours),
                              ("item_id", want_items, item_neighbours, cfg.item_neighbours)):
        have = got(fn(table(), pc), key)
        assert set(have) == set(want)
        for pair, w in want.items():
            assert abs(have[pair] - w) <= 1e-12, pair
