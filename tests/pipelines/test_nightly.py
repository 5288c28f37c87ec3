"""The nightly job end to end without Prefect: outputs, determinism, atomic publish, locking."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from features.errors import ConfigError, DataError, RunLockedError
from pipelines.nightly import RunConfig, run_nightly
from pipelines.recommend.tables import WORK
from pipelines.store import latest_run, output_lock
from tests.conftest import published, tiny_config_dict

TABLES = ["interactions", "items", "rejected", "user_neighbours", "item_neighbours",
          "user_factors", "item_factors", "candidates", "scored", "recommendations",
          "evaluation"]


def test_tiny_run_publishes_every_table(tiny_config: RunConfig) -> None:
    res = run_nightly(tiny_config, run_id="r1")
    assert latest_run(tiny_config.output.root) == res.path.resolve()
    for name in TABLES:
        assert (res.path / f"{name}.parquet").is_file(), name
    assert (res.path / "warehouse.duckdb").is_file()
    manifest = json.loads((res.path / "manifest.json").read_text())
    assert manifest["rows"]["interactions"] == 30 * 12
    sources = ("user_neighbours", "item_neighbours", "als", "candidates")
    # Serving history h0, the ranker's cut-offs h1, h2 and the evaluation ranker's h3 (the
    # evaluation's own split is h1): each source once per distinct history.
    assert set(manifest["seconds"]) == {
        "ingest", *sources, *(f"{s}@h{k}" for s in ("split", *sources) for k in (1, 2, 3)),
        *(f"train_rows@h{k}" for k in (1, 2, 3)), "ranker", "score", "diversify",
        "ranker@eval", "evaluate"}
    assert manifest["scored_by"] == "lightgbm"
    # Peak memory per stage: at least what the imports take.
    assert set(manifest["peak_rss_mb"]) == set(manifest["seconds"])
    assert all(mb > 50 for mb in manifest["peak_rss_mb"].values())
    assert not (res.path / "work").exists()
    evaluation = pq.read_table(res.path / "evaluation.parquet").to_pylist()
    assert [r["model"] for r in evaluation] == [
        "popularity", "user_pearson", "item_pearson", "als", "ease", "fusion", "lightgbm",
        "lightgbm+diversity"]
    assert all(0 <= r["ndcg_at_10"] <= 1 for r in evaluation)
    assert (res.path / "evaluation.md").read_text().startswith("# Offline evaluation")
    assert "Diversity trade-off" in (res.path / "evaluation.md").read_text()
    # The trade-off curve reuses the evaluation's lists: uncapped = the ranker's, the
    # configured cap (2) = ranker + diversity; caps 1 and 3 are re-ranked for it.
    curve = {r["max_per_author"]: r for r in manifest["evaluation"]["tradeoff"]}
    assert list(curve) == [1, 2, 3, None]
    ndcg = {r["model"]: r["ndcg_at_10"] for r in evaluation}
    assert curve[None]["ndcg_at_10"] == ndcg["lightgbm"]
    assert curve[2]["ndcg_at_10"] == ndcg["lightgbm+diversity"]
    # Cap 1 takes one item per author before any backfill: never fewer authors than uncapped.
    assert curve[1]["distinct_authors_at_10"] >= curve[None]["distinct_authors_at_10"]
    assert (res.path / "ranker.json").is_file()
    recs = pq.read_table(res.path / "recommendations.parquet").to_pylist()
    by_user: dict[str, list[dict[str, object]]] = {}
    for r in recs:
        by_user.setdefault(str(r["user_id"]), []).append(r)
    assert len(by_user) == 30
    history = pq.read_table(res.path / "interactions.parquet").to_pylist()
    seen = {(h["user_id"], h["item_id"]) for h in history}
    for user, rows in by_user.items():
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        assert len(rows) == 5
        assert not any((user, r["item_id"]) in seen for r in rows)
        assert max(Counter(r["author_id"] for r in rows).values()) <= 2
        assert all(str(r["item_id"]).startswith("0") for r in rows)  # ids kept verbatim


def test_cut_off_candidates_cover_only_the_users_with_targets(tmp_path: Path) -> None:
    """Users too short for a hold-out get serving candidates but no cut-off candidates."""
    raw = tiny_config_dict(tmp_path)
    ratings = Path(str(raw["source"]["path"]))  # type: ignore[index]
    lines = ratings.read_text().splitlines()
    short = {f"u{u:03d}" for u in range(6)}
    kept, seen = [lines[0]], Counter[str]()
    for line in lines[1:]:
        user = line.split(",")[0]
        seen[user] += 1
        if user not in short or seen[user] <= 6:  # 6 < min_interactions (10): no target
            kept.append(line)
    ratings.write_text("\n".join(kept) + "\n")
    res = run_nightly(RunConfig.from_dict(raw), run_id="r1")
    serving = set(pq.read_table(res.path / "candidates.parquet").column("user_id").to_pylist())
    assert short <= serving and len(serving) == 30
    cache = Path(str(raw["output"]["root"])) / "cache"  # type: ignore[index]
    for cut in ("h1", "h2", "h3"):
        parts = sorted(cache.glob(str(Path(f"candidates@{cut}", "*", WORK, cut,
                                           "candidates.parts", "*.parquet"))))
        users = {u for p in parts for u in pq.read_table(p).column("user_id").to_pylist()}
        assert users and not users & short, cut
    rows = {r.stage: r.rows for r in res.reports}
    assert sum(rows["candidates@h1"].values()) < sum(rows["candidates"].values())
    evaluation = {r["model"]: r for r in pq.read_table(res.path / "evaluation.parquet")
                  .to_pylist()}
    assert evaluation["lightgbm"]["users"] == 24


def test_same_data_config_seed_give_identical_recommendations(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path)
    raw["output"]["cache"] = False  # type: ignore[index]  # recompute everything both times
    cfg = RunConfig.from_dict(raw)
    a = run_nightly(cfg, run_id="a")
    b = run_nightly(cfg, run_id="b")
    assert not any(r.cached for r in b.reports)
    assert published(a.path, "recommendations").equals(published(b.path, "recommendations"))


def test_rerun_skips_stages_whose_inputs_did_not_change(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path)
    first = run_nightly(RunConfig.from_dict(raw), run_id="first")
    assert not any(r.cached for r in first.reports)
    again = run_nightly(RunConfig.from_dict(raw), run_id="again")
    assert all(r.cached for r in again.reports)
    assert published(first.path, "recommendations").equals(published(again.path, "recommendations"))
    raw["diversify"]["n"] = 3  # type: ignore[index]
    changed = run_nightly(RunConfig.from_dict(raw), run_id="changed")
    recomputed = {r.stage for r in changed.reports if not r.cached}
    assert recomputed == {"diversify", "evaluate"}
    raw["ranker"] = {"model": {"num_leaves": 7}}
    lgbm = run_nightly(RunConfig.from_dict(raw), run_id="lgbm")
    # A LightGBM setting retrains both rankers and rescores; no candidate stage reruns.
    assert {r.stage for r in lgbm.reports if not r.cached} == {
        "ranker", "score", "diversify", "ranker@eval", "evaluate"}
    assert pq.read_table(changed.path / "recommendations.parquet").num_rows == 30 * 3


def test_failed_validation_publishes_nothing_and_keeps_last_good(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path)
    good = run_nightly(RunConfig.from_dict(raw), run_id="good")
    bad_file = tmp_path / "bad.csv"
    bad_file.write_text("user,item,rating,ts\n")
    raw["source"]["path"] = str(bad_file)  # type: ignore[index]
    with pytest.raises(DataError, match="no data rows"):
        run_nightly(RunConfig.from_dict(raw), run_id="bad")
    runs = tmp_path / "out" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["good"]
    assert latest_run(tmp_path / "out") == good.path.resolve()


def test_second_run_on_same_root_fails_fast(tiny_config: RunConfig) -> None:
    with output_lock(tiny_config.output.root), pytest.raises(RunLockedError,
                                                             match="another run"):
        run_nightly(tiny_config)


def test_config_typos_and_ranges_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown key 'als.factors'"):
        RunConfig.from_dict({"als": {"factors": 8}})
    with pytest.raises(ConfigError, match="diversify.max_per_author"):
        RunConfig.from_dict({"diversify": {"max_per_author": 0}})


@pytest.mark.slow
def test_embedded_default_end_to_end(tmp_path: Path) -> None:
    res = run_nightly(RunConfig.from_dict({"output": {"root": str(tmp_path)}}))
    recs = pq.read_table(res.path / "recommendations.parquet")
    assert recs.num_rows == 610 * 20
    per_list = Counter((r["user_id"], r["author_id"]) for r in recs.to_pylist())
    assert max(per_list.values()) <= 2


def test_config_file_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    from flows.cli import load_config

    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "ratings.csv").write_text("user,item,rating,ts\nu,i,1,1\n")
    (sub / "cfg.toml").write_text(
        '[source]\npath = "ratings.csv"\nuser = "user"\nitem = "item"\nweight = "rating"\n'
        'timestamp = "ts"\nitems = []\n[output]\nroot = "out"\n')
    cfg = load_config(sub / "cfg.toml", None, None, None)
    assert cfg.source.path == (sub / "ratings.csv").resolve()
    assert cfg.output.root == (sub / "out").resolve()
    cfg = load_config(sub / "cfg.toml", None, None, tmp_path / "elsewhere")
    assert cfg.output.root == tmp_path / "elsewhere"


def test_runs_glob_counts_each_run_once_and_the_warehouse_sees_them(tmp_path: Path) -> None:
    import duckdb

    raw = tiny_config_dict(tmp_path)
    raw["ranking"], raw["evaluation"] = "fusion", {"enabled": False}
    cfg = RunConfig.from_dict(raw)
    a, b = run_nightly(cfg, run_id="a"), run_nightly(cfg, run_id="b")
    root = cfg.output.root
    assert (root / "latest").is_symlink() and latest_run(root) == b.path.resolve()
    n = pq.read_metadata(a.path / "recommendations.parquet").num_rows
    glob = str(root / "runs" / "*" / "recommendations.parquet")
    rows = duckdb.sql(f"SELECT run_id, count(*) FROM '{glob}' GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [("a", n), ("b", n)]
    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    assert con.sql("SELECT count(*) FROM recommendations").fetchall() == [(2 * n,)]
    assert con.sql("SELECT DISTINCT run_id FROM latest_recommendations").fetchall() == [("b",)]
    recs = pq.read_table(b.path / "recommendations.parquet")
    assert {"title", "ranker", "run_id"} <= set(recs.column_names)
    assert set(recs.column("ranker").to_pylist()) == {"fusion"}
