"""The night's plan: each source once per distinct history, keys that move with their inputs."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from features.errors import ConfigError
from pipelines.nightly import RunConfig, run_nightly
from pipelines.recommend import runner
from pipelines.recommend.stages import Stage, plan
from pipelines.store import RunFolder, validate_run_id
from tests.conftest import published, tiny_config_dict


def test_each_source_runs_once_per_distinct_history() -> None:
    p = plan(RunConfig())
    kinds = Counter(s.kind for s in p.stages)
    # h0 (serving), h1 = the evaluation's train = the ranker's first cut-off, h2, h3.
    assert kinds["user_neighbours"] == kinds["item_neighbours"] == kinds["als"] == 4
    assert kinds["candidates"] == 4 and kinds["split"] == 3 and kinds["train_rows"] == 3
    assert [s.name for s in p.stages if s.kind == "ranker"] == ["ranker", "ranker@eval"]
    assert {h.name for h in p.histories} == {"h0", "h1", "h2", "h3"}
    assert p.stage("evaluate").reads[0] == "h1/history"
    names = [s.name for s in p.stages]
    assert len(names) == len(set(names))


def test_a_different_evaluation_split_gets_its_own_histories() -> None:
    cfg = RunConfig.from_dict({"evaluation": {"split": {"test_fraction": 0.2}}})
    hs = {h.name: h for h in plan(cfg).histories}
    assert hs["e1"].split == "evaluation.split" and hs["e2"].split == "ranker.label_split"
    assert plan(cfg).stage("evaluate").reads[0] == "e1/history"


def test_fusion_without_evaluation_plans_only_the_serving_history() -> None:
    cfg = RunConfig.from_dict({"ranking": "fusion", "evaluation": {"enabled": False}})
    assert [s.name for s in plan(cfg).stages] == [
        "ingest", "user_neighbours", "item_neighbours", "als", "candidates", "score",
        "diversify"]


def keys(cfg: RunConfig) -> dict[str, str]:
    p = plan(cfg)
    memo: dict[str, str] = {}
    return {s.name: runner.stage_key(p, s, cfg, memo) for s in p.stages}


def changed(a: RunConfig, b: RunConfig) -> set[str]:
    ka, kb = keys(a), keys(b)
    return {n for n in ka if ka[n] != kb.get(n)}


def test_stage_keys_change_only_with_their_own_inputs(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path)
    base = RunConfig.from_dict(raw)
    lgbm = RunConfig.from_dict({**raw, "ranker": {"model": {"num_leaves": 7}}})
    assert changed(base, lgbm) == {"ranker", "score", "diversify", "ranker@eval", "evaluate"}
    div = RunConfig.from_dict({**raw, "diversify": {"n": 3}})
    assert changed(base, div) == {"diversify", "evaluate"}
    als = RunConfig.from_dict({**raw, "als": {"epochs": 3}})
    assert {n.split("@")[0] for n in changed(base, als)} == {
        "als", "candidates", "train_rows", "ranker", "score", "diversify", "evaluate"}
    shards = RunConfig.from_dict({**raw, "shards": {"users": 3}})
    assert changed(base, shards) == set()  # the output does not depend on the shard size


def test_warm_als_starts_each_history_from_the_cut_off_below_it(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path)
    cold = plan(RunConfig.from_dict(raw))
    assert all(s.reads == (s.reads[0],) for s in cold.stages if s.kind == "als")
    cfg = RunConfig.from_dict({**raw, "als": {**raw["als"], "warm_epochs": 2}})
    p = plan(cfg)
    # h3 is cut from h2, h2 from h1, h1 from h0: each ALS reads its child's factors.
    assert len(p.stage("als@h3").reads) == 1  # the deepest cut-off starts at random
    for name, child in (("als@h2", "h3"), ("als@h1", "h2"), ("als", "h1")):
        assert p.stage(name).reads[1:] == (f"{child}/user_factors", f"{child}/item_factors")
    order = [s.name for s in p.stages]
    assert order.index("als@h3") < order.index("als@h2") < order.index("als@h1") < \
        order.index("als")
    assert {n.split("@")[0] for n in changed(RunConfig.from_dict(raw), cfg)} >= {"als"}
    res = run_nightly(cfg, run_id="warm")
    assert published(res.path, "recommendations").num_rows > 0
    again = run_nightly(RunConfig.from_dict({**raw, "als": {**raw["als"], "warm_epochs": 2},
                                             "output": {"root": str(tmp_path / "again")}}))
    assert published(res.path, "recommendations").equals(published(again.path,
                                                                   "recommendations"))


def test_user_pearson_off_skips_user_neighbours_under_its_own_key(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path)
    base = RunConfig.from_dict(raw)
    fewer = RunConfig.from_dict({**raw, "candidates": {**raw["candidates"], "user_pearson": 3}})
    assert not {n for n in changed(base, fewer) if n.startswith("user_neighbours")}
    off = RunConfig.from_dict({**raw, "candidates": {**raw["candidates"], "user_pearson": 0}})
    assert {n for n in changed(base, off) if n.startswith("user_neighbours")} == {
        "user_neighbours", "user_neighbours@h1", "user_neighbours@h2", "user_neighbours@h3"}
    res = run_nightly(off, run_id="off")
    assert published(res.path, "user_neighbours").num_rows == 0
    assert published(res.path, "recommendations").num_rows > 0
    assert published(res.path, "candidates").column("user_pearson_rank").null_count == \
        published(res.path, "candidates").num_rows


def test_code_keys_cover_only_the_stage_code() -> None:
    assert not any("generative" in f or "style" in f or "audio" in f
                   for files in runner.STAGE_CODE.values() for f in files)
    assert runner.code_version("ingest") != runner.code_version("als")
    listed = {f for files in runner.STAGE_CODE.values() for f in files} | set(runner.COMMON)
    assert all((runner.REPO / f).is_file() for f in listed), "a stage lists a missing file"


@pytest.mark.slow
def test_shard_size_does_not_change_the_published_run(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path)
    one = run_nightly(RunConfig.from_dict({**raw, "output": {"root": str(tmp_path / "a")}}))
    many = run_nightly(RunConfig.from_dict({**raw, "shards": {"users": 4},
                                            "output": {"root": str(tmp_path / "b")}}))
    for name in ("candidates", "scored", "recommendations", "evaluation"):
        assert published(one.path, name).equals(published(many.path, name)), name


def test_partial_config_sections_keep_the_documented_defaults() -> None:
    cfg = RunConfig.from_dict({"user_neighbours": {"block_elements": 1000},
                               "item_neighbours": {"shrinkage": 5.0}})
    assert (cfg.user_neighbours.k, cfg.user_neighbours.min_support) == (50, 5)
    assert (cfg.item_neighbours.k, cfg.item_neighbours.min_support) == (50, 5)
    assert cfg.item_neighbours.shrinkage == 5.0 and RunConfig().item_neighbours.shrinkage == 200
    assert cfg.user_neighbours == RunConfig().user_neighbours.model_copy(
        update={"block_elements": 1000})


@pytest.mark.parametrize("bad", [".staging-X", "night.tmp", "../escape", "a/b", "latest",
                                 "", "x" * 101, "-lead", "has space", "cache"])
def test_run_ids_are_validated_before_any_work(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid run id"):
        validate_run_id(bad)
    cfg = RunConfig.from_dict({**tiny_config_dict(tmp_path),
                               "output": {"root": str(tmp_path / "out")}})
    with pytest.raises(ConfigError, match="invalid run id"):
        run_nightly(cfg, run_id=bad)
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize("good", ["2026-12-01", "nightly_01", "A", "20261201T010203Z-abc123"])
def test_good_run_ids_pass(good: str) -> None:
    assert validate_run_id(good) == good


def test_a_used_run_id_fails_before_the_work(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path)
    raw["ranking"], raw["evaluation"] = "fusion", {"enabled": False}
    cfg = RunConfig.from_dict(raw)
    run_nightly(cfg, run_id="once")
    with pytest.raises(ConfigError, match="already used"):
        run_nightly(cfg, run_id="once")


def test_a_toml_nested_too_deep_is_a_config_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        RunConfig.from_toml(deep)


def test_concurrent_runner_keeps_dependencies_and_runs_independent_stages_together(
        tmp_path: Path) -> None:
    p = plan(RunConfig())
    cond = threading.Condition()
    spans: dict[str, tuple[float, float]] = {}
    live, most, calls = [0], [0], [0]

    def call(stage: Stage, run: object) -> runner.StageReport:
        start = time.perf_counter()
        with cond:
            live[0] += 1
            calls[0] += 1
            most[0] = max(most[0], live[0])
            cond.notify_all()
            if calls[0] <= 3:  # the first three wait for each other (ingest alone: in vain)
                cond.wait_for(lambda: most[0] >= 3 or stage.kind == "ingest", timeout=5)
        time.sleep(0.002)
        with cond:
            live[0] -= 1
        spans[stage.name] = (start, time.perf_counter())
        return runner.StageReport(stage.name, {}, 0.0)

    reports = runner.concurrent(call, 3)(p, RunFolder(tmp_path, "r"))
    assert [r.stage for r in reports] == [s.name for s in p.stages]  # plan order
    for s in p.stages:
        for up in p.upstream(s):
            assert spans[up.name][1] <= spans[s.name][0], (up.name, s.name)
    assert most[0] == 3  # the histories' independent sources ran side by side


def test_ready_stages_start_longest_chain_first(tmp_path: Path) -> None:
    p = plan(RunConfig())
    depth = runner.chain_lengths(p)
    assert depth["ingest"] == max(depth.values()) and depth["diversify"] == 1
    order: list[str] = []

    def call(stage: Stage, run: object) -> runner.StageReport:
        order.append(stage.name)
        return runner.StageReport(stage.name, {}, 0.0)

    runner.concurrent(call, 1)(p, RunFolder(tmp_path, "r"))
    done: set[str] = set()
    for name in order:  # each start: its inputs done, and no ready stage had a longer chain
        ready = [s.name for s in p.stages if s.name not in done
                 and all(u.name in done for u in p.upstream(s))]
        assert name in ready and depth[name] == max(depth[r] for r in ready), name
        done.add(name)
    # The cut-offs' chains lead to the rankers, so they start before the serving sources.
    assert order.index("split@h3") < order.index("user_neighbours")


def test_local_engine_runs_shards_side_by_side_in_shard_order(tmp_path: Path) -> None:
    from pipelines.recommend.engine import LocalEngine

    def shards_meeting(timeout: float) -> Callable[[int, int, Path], int]:
        both = threading.Barrier(2, timeout=timeout)  # breaks unless shards 0 and 1 overlap

        def shard(shared: int, i: int, path: Path) -> int:
            if i < 2:
                both.wait()
            path.write_text(str(i))
            return shared * i
        return shard

    paths = [tmp_path / f"part-{i}" for i in range(5)]
    assert LocalEngine(2).map_shards(shards_meeting(10), 10, paths) == [0, 10, 20, 30, 40]
    assert [p.read_text() for p in paths] == [str(i) for i in range(5)]
    with pytest.raises(threading.BrokenBarrierError):  # one at a time: shard 0 waits alone
        LocalEngine(1).map_shards(shards_meeting(0.2), 10, paths)


def test_concurrent_runner_stops_at_the_first_failure(tmp_path: Path) -> None:
    p = plan(RunConfig())
    started: list[str] = []

    def call(stage: Stage, run: object) -> runner.StageReport:
        started.append(stage.name)
        if stage.name == "split@h1":
            raise ValueError("bad split")
        time.sleep(0.01)
        return runner.StageReport(stage.name, {}, 0.0)

    with pytest.raises(ValueError, match="bad split"):
        runner.concurrent(call, 2)(p, RunFolder(tmp_path, "r"))
    downstream = {s.name for s in p.stages if "h1" in s.name and s.name != "split@h1"}
    assert not downstream & set(started)
    assert "evaluate" not in started


def test_a_cluster_runs_every_stage_but_ingest_whole_on_a_worker(tmp_path: Path) -> None:
    p = plan(RunConfig())
    cfg = RunConfig()
    whole = {s.kind for s in p.stages if runner.on_one_worker(s, tmp_path, cfg)}
    assert whole == {s.kind for s in p.stages} - {"ingest"}  # the ranker: under the threshold


def test_a_publish_task_rerun_after_its_combine_keeps_the_combined_table(
        tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.recommend import manifest as mf
    from pipelines.recommend.tables import parts_dir, table_path

    parts = parts_dir(tmp_path, "scored")
    parts.mkdir(parents=True)
    for i in range(3):
        pq.write_table(pa.table({"user_id": [f"u{i}"] * (i + 1)}), parts / f"part-{i:05d}.parquet")
    path = table_path(tmp_path, "scored")
    shared = (tmp_path, ["scored"], "run-1")
    assert mf._publishable(shared, 0, path) == 6
    # A worker lost after the combine but before the parts were gone: the retry keeps the
    # combined table instead of combining what is left.
    parts.mkdir()
    pq.write_table(pa.table({"user_id": ["u9"]}), parts / "part-00000.parquet")
    assert mf._publishable(shared, 0, path) == 6
    assert not parts.exists()
    assert pq.read_table(path).column("run_id").to_pylist() == ["run-1"] * 6


def test_a_finished_published_table_is_combined_early_and_its_parts_kept(
        tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.recommend import manifest as mf
    from pipelines.recommend.tables import parts_dir, table_path

    staging = tmp_path / "runs" / ".staging-run-7"
    parts = parts_dir(staging, "scored")
    parts.mkdir(parents=True)
    for i in range(3):
        pq.write_table(pa.table({"user_id": [f"u{i}"] * (i + 1)}), parts / f"part-{i:05d}.parquet")
    p = plan(RunConfig())
    mf.combine_early(staging, p, ("scored", "h1/candidates"))  # cut-offs: never published
    mf.settle(staging)
    combined = pq.read_table(table_path(staging, "scored"))
    assert combined.column("user_id").to_pylist() == ["u0", "u1", "u1", "u2", "u2", "u2"]
    assert set(combined.column("run_id").to_pylist()) == {"run-7"}
    assert len(list(parts.glob("part-*.parquet"))) == 3  # later stages still read them
    assert not table_path(staging, "h1/candidates").exists()
    # At publish the combined file is kept and only the parts go.
    assert mf._publishable((staging, ["scored"], "run-7"), 0, table_path(staging, "scored")) == 6
    assert not parts.exists()


def test_a_failed_early_combine_leaves_no_file_and_the_parts(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.recommend import manifest as mf
    from pipelines.recommend.tables import parts_dir, table_path

    staging = tmp_path / "runs" / ".staging-run-8"
    parts = parts_dir(staging, "scored")
    parts.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": ["u0"]}), parts / "part-00000.parquet")
    (parts / "part-00001.parquet").write_bytes(b"not parquet")
    mf.combine_early(staging, plan(RunConfig()), ("scored",))
    mf.settle(staging)  # logged, not raised: publish combines (and fails) on its own
    assert sorted(f.name for f in staging.iterdir()) == ["scored.parts"]
    assert len(list(parts.iterdir())) == 2
    with pytest.raises(Exception, match="(?i)parquet"):
        mf._publishable((staging, ["scored"], "run-8"), 0, table_path(staging, "scored"))


def test_the_malloc_arena_cap_is_accepted_by_this_libc() -> None:
    import platform

    from pipelines.recommend.engine import limit_malloc_arenas

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert limit_malloc_arenas() is True  # mallopt answers 0 to a parameter it does not know
