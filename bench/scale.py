"""Scale benchmark: the nightly flow (local engine, evaluation on) against raw ALS + LightGBM fits.

For each data set, one child process runs the whole nightly job, then in the same process a
reference: a raw `implicit` ALS fit with the same settings plus a raw LightGBM lambdarank fit
(100 rounds, 15 leaves, 1 thread, on 500,000 random rows x 28 features in 5,000 queries of
100, and on the run's own sampled training table). It prints wall seconds per stage, peak RSS
and the ratio whole-flow / reference, then the growth exponent of time and memory across the
synthetic sizes.

    python bench/scale.py                       # embedded, ML-1M 1-2999, books-shaped, 1M
    python bench/scale.py --sets synthetic-1m,synthetic-3m,synthetic-10m
    python bench/scale.py --engine dask --workers 1,2 --sets synthetic-1m
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

SYNTHETIC = {"synthetic-1m": (1_000_000, 100_000, 20_000),
             "synthetic-3m": (3_000_000, 300_000, 60_000),
             "synthetic-10m": (10_000_000, 1_000_000, 200_000)}
DEFAULT_SETS = "embedded,ml1m-2999,books-shaped,synthetic-1m"


def synthetic(path: Path, n: int, n_users: int, n_items: int, seed: int = 0) -> None:
    """Exactly n distinct power-law (user, item) pairs, ratings 1-5, three years of time stamps.

    Activity and popularity follow rank^-0.7 and rank^-0.9 over random id orders (bounded
    laws: an unbounded Zipf clipped to the catalogue piles its tail on one id and leaves a
    fraction of n distinct pairs). Draws repeat until n distinct pairs exist.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)

    def law(size: int, a: float) -> np.ndarray:
        p = 1.0 / np.arange(1, size + 1) ** a
        return p / p.sum()

    pu, pi = law(n_users, 0.7), law(n_items, 0.9)
    users, items = rng.permutation(n_users), rng.permutation(n_items)
    keys = np.zeros(0, np.int64)
    while len(keys) < n:
        m = 2 * (n - len(keys)) + 1000
        new = (users[rng.choice(n_users, m, p=pu)].astype(np.int64) * n_items
               + items[rng.choice(n_items, m, p=pi)])
        keys = np.unique(np.concatenate([keys, new]))
    pairs = rng.permutation(keys)[:n]
    ts = 1_500_000_000 + rng.integers(0, 3 * 365 * 86400, size=len(pairs))
    pq.write_table(pa.table({
        "user": pairs // n_items, "item": pairs % n_items,
        "rating": rng.integers(1, 6, size=len(pairs)).astype(np.float64), "ts": ts}), path)


def books_shaped(path: Path, seed: int = 0) -> None:
    """204k interactions, 48k users (most with 1-5), 18k items, ratings 0-10 with many zeros."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n_users, n_items, target = 48_299, 18_185, 204_164
    sizes = np.minimum(rng.zipf(2.1, size=n_users), 2000)
    sizes = np.maximum(1, (sizes * target / sizes.sum()).round().astype(np.int64))
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity /= popularity.sum()
    users, items = [], []
    for u, s in enumerate(sizes):
        users.append(np.full(s, u))
        items.append(rng.choice(n_items, size=min(s, n_items), replace=False, p=popularity))
    u = np.concatenate(users)
    i = np.concatenate(items)
    rating = np.where(rng.random(len(u)) < 0.6, 0, rng.integers(1, 11, size=len(u)))
    isbn = np.array([f"ISBN{j:09d}X" for j in range(n_items)])
    pq.write_table(pa.table({"user": u, "isbn": isbn[i], "rating": rating.astype(np.float64)}),
                   path)


def source_for(name: str, work: Path) -> dict[str, Any]:
    """The [source] section of one benchmark data set (generated ones are written to `work`)."""
    if name == "embedded":
        return {}
    if name == "ml1m-2999":
        return {"path": str(SHARED / "ml-1m" / "ratings_users0001-2999.dat.gz"),
                "format": "dat", "header": False, "names": ["user", "item", "rating", "ts"],
                "user": "user", "item": "item", "weight": "rating", "timestamp": "ts",
                "items": []}
    if name == "ml1m-full":
        return {"path": str(SHARED / "ml-1m" / "ratings_user_movie_only.csv.gz"),
                "user": "UserID", "item": "MovieID", "items": []}
    path = work / f"{name}-v2.parquet"  # v2: exactly n distinct pairs
    if name == "books-shaped":
        if not path.exists():
            books_shaped(path)
        return {"path": str(path), "user": "user", "item": "isbn", "weight": "rating",
                "items": []}
    if name in SYNTHETIC:
        if not path.exists():
            synthetic(path, *SYNTHETIC[name])
        return {"path": str(path), "user": "user", "item": "item", "weight": "rating",
                "timestamp": "ts", "items": []}
    raise SystemExit(f"unknown data set {name!r}")


def cpu_s() -> float:
    """User + system CPU seconds of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference(run_root: Path, interactions: Any, cfg: Any) -> dict[str, float]:
    """Raw ALS fit (same settings) + raw LightGBM lambdarank fits, timed in this process."""
    import lightgbm as lgb
    import numpy as np
    import polars as pl

    from features.matrix import build_matrix
    from models.als import AlsModel

    out: dict[str, float] = {}
    m = build_matrix(interactions)
    t = time.perf_counter()
    AlsModel(cfg.als).fit(m.weights)
    out["als_fit_s"] = time.perf_counter() - t
    rng = np.random.default_rng(0)
    x = rng.random((500_000, 28), dtype=np.float32)
    y = (rng.random(500_000) < 0.05).astype(np.float32)
    params = {"objective": "lambdarank", "num_leaves": 15, "learning_rate": 0.05,
              "num_threads": 1, "verbose": -1, "seed": 0}
    t = time.perf_counter()
    lgb.train(params, lgb.Dataset(x, y, group=[100] * 5000), num_boost_round=100)
    out["lgbm_random_500k_s"] = time.perf_counter() - t
    from pipelines.recommend.stages import plan
    from pipelines.recommend.tables import WORK

    # The serving ranker's whole training table: the train_rows of every cut-off it reads.
    ranker = next((s for s in plan(cfg).stages if s.name == "ranker"), None)
    cuts = [t.split("/")[0] for t in ranker.reads] if ranker is not None else []
    own = sorted(p for h in cuts for p in (run_root / "cache").glob(
        str(Path(f"train_rows@{h}", "*", WORK, h, "train_rows.parts", "*.parquet"))))
    if own:
        frame = pl.concat([pl.read_parquet(p).with_columns(pl.lit(p.parts[-3]).alias("_cut"))
                           for p in own], how="diagonal_relaxed")
        if frame.height:
            frame = frame.sort("_cut", "user_id")
            cols = [c for c in frame.columns if c not in ("_cut", "user_id", "item_id", "label")]
            groups = frame.group_by("_cut", "user_id", maintain_order=True).len()["len"].to_list()
            t = time.perf_counter()
            lgb.train(params, lgb.Dataset(frame.select(cols).to_numpy().astype(np.float32),
                                          frame["label"].to_numpy(), group=groups),
                      num_boost_round=100)
            out["lgbm_own_table_s"] = time.perf_counter() - t
            out["own_table_rows"] = float(frame.height)
    return out


def child(name: str, work: Path, engine: str, workers: int,
          distributed_min_rows: int | None = None) -> dict[str, Any]:
    """One data set: the nightly job then the reference, in this process."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from pipelines.recommend.engine import limit_malloc_arenas

    limit_malloc_arenas()  # as the CLI does at start-up
    from pipelines.recommend.config import RunConfig
    from pipelines.recommend.runner import run_nightly

    root = work / f"out-{name}-{engine}-{workers}"
    shutil.rmtree(root, ignore_errors=True)  # a fresh run: no stage may come from the cache
    raw: dict[str, Any] = {"output": {"root": str(root), "cache": True}}
    if src := source_for(name, work):
        raw["source"] = src
    if distributed_min_rows is not None:
        raw["ranker"] = {"distributed_min_rows": distributed_min_rows}
    cfg = RunConfig.from_dict(raw)
    eng = None
    client = None
    if engine == "dask":
        from pipelines.recommend.dask_engine import DaskEngine, local_client

        client = local_client(workers, 1)
        eng = DaskEngine(client)
    workers_cpu = 0.0
    if client is not None:
        workers_cpu = -sum(client.run(cpu_s).values())
    t, cpu = time.perf_counter(), cpu_s()
    res = run_nightly(cfg, engine=eng)
    wall = time.perf_counter() - t
    driver_cpu = cpu_s() - cpu  # the driver: stages' own work, and the scheduler on a cluster
    rss_flow = peak_rss_mb()
    if client is not None:
        workers_cpu += sum(client.run(cpu_s).values())
        client.close()
    import pyarrow.parquet as pq

    interactions = pq.read_table(res.path / "interactions.parquet")
    ref = reference(root, interactions, cfg)
    ev = {r["model"]: r["ndcg_at_10"] for r in pq.read_table(
        res.path / "evaluation.parquet").to_pylist()}
    return {"set": name, "engine": engine, "workers": workers, "wall_s": wall,
            "interactions": interactions.num_rows, "peak_rss_mb_flow": rss_flow,
            "driver_cpu_s": driver_cpu, "workers_cpu_s": workers_cpu,
            "stages": res.manifest["seconds"], "stage_rss_mb": res.manifest["peak_rss_mb"],
            "reference": ref, "recommendations": str(res.path / "recommendations.parquet"),
            "ndcg": {k: ev.get(k) for k in ("lightgbm", "lightgbm+diversity", "als")}}


def against(local: Path, r: dict[str, Any]) -> str:
    """Share of the local run's (user, item) recommendations this run has too, and NDCG."""
    import pyarrow.parquet as pq

    def pairs(path: Path | str) -> set[tuple[str, str]]:
        t = pq.read_table(path, columns=["user_id", "item_id"])
        return set(zip(t["user_id"].to_pylist(), t["item_id"].to_pylist(), strict=True))

    a, b = pairs(local), pairs(r["recommendations"])
    ev = {x["model"]: x["ndcg_at_10"] for x in pq.read_table(
        local.parent / "evaluation.parquet").to_pylist()}
    return (f"list overlap {len(a & b) / max(len(a), 1):.4f}, NDCG@10 lightgbm "
            f"{r['ndcg']['lightgbm']:.4f} vs {ev['lightgbm']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=DEFAULT_SETS, help="comma-separated data sets")
    ap.add_argument("--engine", default="local", choices=["local", "dask"])
    ap.add_argument("--workers", default="1", help="dask workers, e.g. 1,2")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "recsys-scale")
    ap.add_argument("--distributed-min-rows", type=int, default=None,
                    help="ranker.distributed_min_rows (1: LightGBM trains with lightgbm.dask)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        name, workers = args.child.split(":")
        print(json.dumps(child(name, args.work, args.engine, int(workers),
                               args.distributed_min_rows)))
        return
    results = []
    for name in args.sets.split(","):
        for workers in [int(w) for w in args.workers.split(",")]:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", f"{name}:{workers}", "--engine",
                 args.engine, "--work", str(args.work),
                 *([] if args.distributed_min_rows is None else
                   ["--distributed-min-rows", str(args.distributed_min_rows)])],
                capture_output=True, text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
            if proc.returncode != 0:
                print(f"{name}: failed\n{proc.stderr[-3000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            ref = r["reference"]
            base = ref["als_fit_s"] + ref.get("lgbm_own_table_s", ref["lgbm_random_500k_s"])
            spec = ref["als_fit_s"] + ref["lgbm_random_500k_s"]
            top = sorted(r["stages"].items(), key=lambda kv: -kv[1])[:6]
            print(f"\n{name} ({r['interactions']:,} interactions, {args.engine} x{workers}): "
                  f"wall {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb_flow']:.0f} MB")
            print(f"  CPU: driver {r['driver_cpu_s']:.1f} s, workers {r['workers_cpu_s']:.1f} s")
            print(f"  reference: ALS {ref['als_fit_s']:.1f} s, LightGBM own table "
                  f"{ref.get('lgbm_own_table_s', float('nan')):.1f} s "
                  f"({ref.get('own_table_rows', 0):,.0f} rows), LightGBM 500k random "
                  f"{ref['lgbm_random_500k_s']:.1f} s")
            print(f"  ratio flow / (ALS + LightGBM own table) = {r['wall_s'] / base:.2f}x; "
                  f"flow / (ALS + LightGBM 500k random) = {r['wall_s'] / spec:.2f}x")
            print("  slowest stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in top))
            rss, last, rises = r.get("stage_rss_mb", {}), 0.0, []
            for stage in r["stages"]:  # plan order: the stages that raised the peak
                if rss.get(stage, 0.0) > last + 50:
                    rises.append(f"{stage} {rss[stage]:.0f} MB")
                last = max(last, rss.get(stage, 0.0))
            print("  peak RSS set by: " + ", ".join(rises))
            print(f"  NDCG@10: {r['ndcg']}")
            local = args.work / f"out-{name}-local-1" / "latest" / "recommendations.parquet"
            if args.engine == "dask" and local.exists():  # after a --engine local run
                print("  against the local engine's run: " + against(local, r))
    synth = sorted((r for r in results if r["set"] in SYNTHETIC and r["workers"] == 1),
                   key=lambda r: r["interactions"])
    if len(synth) >= 2:
        a, b = synth[0], synth[-1]
        k = math.log(b["interactions"] / a["interactions"])
        print(f"\ngrowth {a['set']} -> {b['set']}: time x{b['wall_s'] / a['wall_s']:.2f} "
              f"(exponent {math.log(b['wall_s'] / a['wall_s']) / k:.2f}), memory "
              f"x{b['peak_rss_mb_flow'] / a['peak_rss_mb_flow']:.2f} (exponent "
              f"{math.log(b['peak_rss_mb_flow'] / a['peak_rss_mb_flow']) / k:.2f})")
    by_set: dict[str, dict[int, float]] = {}
    for r in results:
        by_set.setdefault(r["set"], {})[r["workers"]] = r["wall_s"]
    for name, walls in by_set.items():
        if 1 in walls and 2 in walls:
            print(f"{name}: {args.engine} speed-up 1 -> 2 workers {walls[1] / walls[2]:.2f}x")


if __name__ == "__main__":
    main()
